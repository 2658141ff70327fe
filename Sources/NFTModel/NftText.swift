/// Prints rulesets in nft syntax: the layout `nft list ruleset` uses, and text `nft -f` accepts.
/// Everything is appended to one string (a dry run of 10,000 Services is some 8 MB of text):
/// no string per element or rule is built and joined.
extension Ruleset {
    public var nftText: String {
        var out = ""
        out.reserveCapacity(64 * (chains.reduce(0) { $0 + $1.rules.count } + sets.reduce(0) { $0 + $1.elements.count }) + 256)
        write(to: &out)
        return out
    }

    public func write(to out: inout String) {
        out += "table \(family.rawValue) \(table) {\n"
        if flags & Self.dormant != 0 { out += "\tflags dormant\n" }
        if let comment { out += "\tcomment \(quoted(comment))\n" }
        if flags != 0 || comment != nil { out += "\n" }
        var first = true
        for s in sets {
            if !first { out += "\n" }
            first = false
            s.writeBlock(to: &out, indent: "\t")
        }
        for c in chains {
            if !first { out += "\n" }
            first = false
            c.writeBlock(to: &out, indent: "\t")
        }
        out += "}\n"
    }
}

extension NamedSet {
    public var kindWord: String { isMap ? "map" : "set" }

    func writeBlock(to s: inout String, indent: String) {
        s += indent
        s += kindWord
        s += " "
        s += name
        s += " {\n"
        s += indent
        s += "\t"
        s += typeText
        s += "\n"
        if let t = timeout { s += "\(indent)\tflags dynamic,timeout\n\(indent)\ttimeout \(t)s\n" }
        if !elements.isEmpty {
            s += indent
            s += "\telements = {\n"
            for (i, e) in elements.enumerated() {
                if i > 0 { s += ",\n" }
                s += indent
                s += "\t\t"
                e.write(to: &s)
            }
            s += "\n"
            s += indent
            s += "\t}\n"
        }
        s += indent
        s += "}\n"
    }
}

extension SetElement {
    public var nftText: String {
        var s = ""
        write(to: &s)
        return s
    }

    func write(to s: inout String) {
        KeyValue.write(key, to: &s)
        if let c = comment {
            s += " comment "
            s += quoted(c)
        }
        if let v = verdict {
            s += " : "
            s += v.description
        }
        if let d = data {
            s += " : "
            KeyValue.write(d, to: &s)
        }
    }
}

extension KeyValue {
    /// Fields joined by " . ", as nft prints a concatenation.
    static func write(_ fields: ElementKey, to s: inout String) {
        for (i, f) in fields.enumerated() {
            if i > 0 { s += " . " }
            switch f {
            case .ip(let a) where a.family == .v4:
                let v = a.v4Value
                s += String(v >> 24)
                s += "."
                s += String(v >> 16 & 0xff)
                s += "."
                s += String(v >> 8 & 0xff)
                s += "."
                s += String(v & 0xff)
            case .port(let p): s += String(p)
            default: s += f.description
            }
        }
    }
}

extension BaseChain {
    public var nftText: String {
        "type \(type.rawValue) hook \(hook.rawValue) priority \(priority); policy \(policy.rawValue);"
    }
}

extension Chain {
    func writeBlock(to s: inout String, indent: String) {
        s += "\(indent)chain \(name) {\n"
        if let b = base { s += "\(indent)\t\(b.nftText)\n" }
        for r in rules {
            s += indent
            s += "\t"
            s += r.nftText
            s += "\n"
        }
        s += indent
        s += "}\n"
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
