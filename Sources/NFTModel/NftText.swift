/// Prints rulesets in nft syntax: the layout `nft list ruleset` uses, and text `nft -f` accepts.
/// Everything is appended to one buffer of bytes (a dry run of 10,000 Services is some 8 MB of
/// text): no string per element or rule is built and joined.
extension Ruleset {
    /// The table as `nft -f` reads it.
    public var nftText: String { String(decoding: nftBytes, as: UTF8.self) }

    /// The table as `nft -f` reads it, as UTF-8.
    public var nftBytes: [UInt8] {
        var out: [UInt8] = []
        writeNft { out += $0 }
        return out
    }

    /// The table as `nft -f` reads it, handed to `emit` in order a run of bytes at a time.
    /// Runs are written on all cores a batch at a time: at 10,000 Services the text is 8 MB,
    /// printing it on one core was an eighth of a dry run, and holding all of it at once would
    /// be 8 MB more at the dry run's peak.
    public func writeNft(_ emit: ([UInt8]) -> Void) {
        let pieces = textPieces
        for start in stride(from: 0, to: pieces.count, by: Self.piecesPerBatch) {
            let batch = Array(pieces[start..<min(pieces.count, start + Self.piecesPerBatch)])
            for bytes in Parallel.map(
                batch, minimumPerWorker: 8,
                { piece in
                    var t = NftTextSink()
                    write(piece, to: &t)
                    return t.bytes
                })
            { emit(bytes) }
        }
    }

    private static let piecesPerBatch = 32

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

    func write(_ piece: TextPiece, to out: inout NftTextSink) {
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
        var t = NftTextSink()
        for piece in textPieces { write(piece, to: &t) }
        out += String(decoding: t.bytes, as: UTF8.self)
    }
}

/// nft text as it is written: UTF-8 bytes, with numbers and addresses formatted in place, so
/// an element costs no string of its own (a dry run of 10,000 Services writes 230,000 lines).
struct NftTextSink {
    var bytes: [UInt8] = []

    static func += (t: inout NftTextSink, s: String) {
        var s = s
        s.withUTF8 { t.bytes.append(contentsOf: $0) }
    }

    mutating func byte(_ b: UInt8) { bytes.append(b) }

    /// `n` in decimal.
    mutating func decimal(_ n: UInt32) {
        if n < 10 {
            bytes.append(0x30 + UInt8(n))
            return
        }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        var v = n
        withUnsafeMutableBytes(of: &digits) { d in
            while v > 0 {
                d[count] = 0x30 + UInt8(v % 10)
                v /= 10
                count += 1
            }
            for i in stride(from: count - 1, through: 0, by: -1) { bytes.append(d[i]) }
        }
    }

    /// A dotted IPv4 address.
    mutating func ipv4(_ v: UInt32) {
        decimal(v >> 24)
        byte(0x2E)
        decimal(v >> 16 & 0xff)
        byte(0x2E)
        decimal(v >> 8 & 0xff)
        byte(0x2E)
        decimal(v & 0xff)
    }
}

extension NamedSet {
    public var kindWord: String { isMap ? "map" : "set" }

    func writeBlock(to s: inout NftTextSink, indent: String) {
        writeHead(to: &s, indent: indent)
        writeElements(elements.indices, to: &s, indent: indent)
        writeTail(to: &s, indent: indent)
    }

    func writeHead(to s: inout NftTextSink, indent: String) {
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
    func writeElements(_ range: Range<Int>, to s: inout NftTextSink, indent: String) {
        for i in range {
            if i > 0 { s += ",\n" }
            s += indent
            s += "\t\t"
            elements[i].write(to: &s)
        }
    }

    func writeTail(to s: inout NftTextSink, indent: String) {
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
        var s = NftTextSink()
        write(to: &s)
        return String(decoding: s.bytes, as: UTF8.self)
    }

    func write(to s: inout NftTextSink) {
        KeyValue.write(key, to: &s)
        if let c = comment {
            s += " comment "
            writeQuoted(c, to: &s)
        }
        if let v = verdict {
            s += " : "
            v.write(to: &s)
        }
        if let d = data {
            s += " : "
            KeyValue.write(d, to: &s)
        }
    }
}

extension Verdict {
    func write(to s: inout NftTextSink) {
        switch self {
        case .jump(let c):
            s += "jump "
            s += c
        case .goto(let c):
            s += "goto "
            s += c
        default: s += description
        }
    }
}

extension KeyValue {
    /// Fields joined by " . ", as nft prints a concatenation.
    static func write(_ fields: ElementKey, to s: inout NftTextSink) {
        for (i, f) in fields.enumerated() {
            if i > 0 { s += " . " }
            switch f {
            case .ip(let a) where a.family == .v4: s.ipv4(a.v4Value)
            case .port(let p): s.decimal(UInt32(p))
            case .integer(let n): s.decimal(n)
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
    func writeBlock(to s: inout NftTextSink, indent: String) {
        s += indent
        s += "chain "
        s += name
        s += " {\n"
        if let b = base { s += "\(indent)\t\(b.nftText)\n" }
        for r in rules {
            s += indent
            s += "\t"
            r.write(to: &s)
            s += "\n"
        }
        s += indent
        s += "}\n"
    }
}

/// `text` in double quotes with backslash and quote escaped, as `quoted` gives it.
func writeQuoted(_ text: String, to s: inout NftTextSink) {
    s.byte(0x22)
    var text = text
    text.withUTF8 { u in
        for b in u {
            if b == 0x5C || b == 0x22 { s.byte(0x5C) }
            s.byte(b)
        }
    }
    s.byte(0x22)
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
