/// Prints rulesets in nft syntax: the layout `nft list ruleset` uses, and text `nft -f` accepts.
extension Ruleset {
    public var nftText: String {
        var out = "table \(family.rawValue) \(table) {\n"
        if flags & Self.dormant != 0 { out += "\tflags dormant\n" }
        if let comment { out += "\tcomment \(quoted(comment))\n" }
        if flags != 0 || comment != nil { out += "\n" }
        var blocks: [String] = []
        for s in sets { blocks.append(s.nftBlock(indent: "\t")) }
        for c in chains { blocks.append(c.nftBlock(indent: "\t")) }
        out += blocks.joined(separator: "\n")
        out += "}\n"
        return out
    }
}

extension NamedSet {
    public var kindWord: String { isMap ? "map" : "set" }

    func nftBlock(indent: String) -> String {
        var s = "\(indent)\(kindWord) \(name) {\n\(indent)\t\(typeText)\n"
        if let t = timeout { s += "\(indent)\tflags dynamic,timeout\n\(indent)\ttimeout \(t)s\n" }
        if !elements.isEmpty {
            let lines = elements.map { "\(indent)\t\t\($0.nftText)" }
            s += "\(indent)\telements = {\n" + lines.joined(separator: ",\n") + "\n\(indent)\t}\n"
        }
        return s + "\(indent)}\n"
    }
}

extension SetElement {
    public var nftText: String {
        var s = keyText
        if let c = comment { s += " comment \(quoted(c))" }
        if let v = verdict { s += " : \(v)" }
        if let d = data { s += " : " + d.map(\.description).joined(separator: " . ") }
        return s
    }
}

extension BaseChain {
    public var nftText: String {
        "type \(type.rawValue) hook \(hook.rawValue) priority \(priority); policy \(policy.rawValue);"
    }
}

extension Chain {
    func nftBlock(indent: String) -> String {
        var s = "\(indent)chain \(name) {\n"
        if let b = base { s += "\(indent)\t\(b.nftText)\n" }
        for r in rules { s += "\(indent)\t\(r.nftText)\n" }
        return s + "\(indent)}\n"
    }
}

/// A string in double quotes with backslash and quote escaped, as nft and iptables-save print it.
public func quoted(_ s: String) -> String {
    "\"" + s.replacingAll("\\", with: "\\\\").replacingAll("\"", with: "\\\"") + "\""
}

extension String {
    /// Plain replacement without Foundation, which this module does not import.
    func replacingAll(_ a: Character, with b: String) -> String {
        var out = ""
        for c in self { if c == a { out += b } else { out.append(c) } }
        return out
    }
}
