/// Prints rulesets in nft syntax: the layout `nft list ruleset` uses, and text `nft -f` accepts.
/// Everything is appended to one string (a dry run of 10,000 Services is some 8 MB of text):
/// no string per element or rule is built and joined.
extension Ruleset {
    /// The table as `nft -f` reads it. Written in pieces on all cores and joined in order (the
    /// same text as `write(to:)`): at 10,000 Services it is 8 MB, and printing it on one core
    /// was an eighth of a dry run.
    public var nftText: String {
        let parts = Parallel.map(textPieces, minimumPerWorker: 8) { piece in
            var s = ""
            write(piece, to: &s)
            return s
        }
        var out = ""
        out.reserveCapacity(parts.reduce(0) { $0 + $1.utf8.count })
        for p in parts { out += p }
        return out
    }

    /// A run of the text: a set's opening, some of its elements, its end, or some chains.
    enum TextPiece: Sendable {
        case head
        case setHead(Int)
        case elements(Int, Range<Int>)
        case setTail(Int)
        case chains(Range<Int>)
        case end
    }

    private static let elementsPerPiece = 4096, chainsPerPiece = 256

    var textPieces: [TextPiece] {
        var out: [TextPiece] = [.head]
        for (i, s) in sets.enumerated() {
            out.append(.setHead(i))
            for start in stride(from: 0, to: s.elements.count, by: Self.elementsPerPiece) {
                out.append(.elements(i, start..<min(s.elements.count, start + Self.elementsPerPiece)))
            }
            out.append(.setTail(i))
        }
        for start in stride(from: 0, to: chains.count, by: Self.chainsPerPiece) {
            out.append(.chains(start..<min(chains.count, start + Self.chainsPerPiece)))
        }
        out.append(.end)
        return out
    }

    func write(_ piece: TextPiece, to out: inout String) {
        switch piece {
        case .head:
            out += "table \(family.rawValue) \(table) {\n"
            if flags & Self.dormant != 0 { out += "\tflags dormant\n" }
            if let comment { out += "\tcomment \(quoted(comment))\n" }
            if flags != 0 || comment != nil { out += "\n" }
        case .setHead(let i):
            if i > 0 { out += "\n" }
            sets[i].writeHead(to: &out, indent: "\t")
        case .elements(let i, let range): sets[i].writeElements(range, to: &out, indent: "\t")
        case .setTail(let i): sets[i].writeTail(to: &out, indent: "\t")
        case .chains(let range):
            for j in range {
                if j > 0 || !sets.isEmpty { out += "\n" }
                chains[j].writeBlock(to: &out, indent: "\t")
            }
        case .end: out += "}\n"
        }
    }

    public func write(to out: inout String) {
        for piece in textPieces { write(piece, to: &out) }
    }
}

extension NamedSet {
    public var kindWord: String { isMap ? "map" : "set" }

    func writeBlock(to s: inout String, indent: String) {
        writeHead(to: &s, indent: indent)
        writeElements(elements.indices, to: &s, indent: indent)
        writeTail(to: &s, indent: indent)
    }

    func writeHead(to s: inout String, indent: String) {
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
        }
    }

    /// Elements `range` of the list, each after the separator from the one before it.
    func writeElements(_ range: Range<Int>, to s: inout String, indent: String) {
        for i in range {
            if i > 0 { s += ",\n" }
            s += indent
            s += "\t\t"
            elements[i].write(to: &s)
        }
    }

    func writeTail(to s: inout String, indent: String) {
        if !elements.isEmpty {
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
