/// A small JSON value with a deterministic printer (keys in the order given), so the model can
/// print its views without Foundation.
public indirect enum JSON: Hashable, Sendable {
    case string(String)
    case number(Int)
    case bool(Bool)
    case null
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool { a.text() == b.text() }
    public func hash(into h: inout Hasher) { h.combine(text()) }

    public func text(indent: String = "") -> String {
        let next = indent + "  "
        switch self {
        case .string(let s): return Self.escape(s)
        case .number(let n): return String(n)
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .array(let a):
            if a.isEmpty { return "[]" }
            return "[\n" + a.map { next + $0.text(indent: next) }.joined(separator: ",\n") + "\n\(indent)]"
        case .object(let o):
            if o.isEmpty { return "{}" }
            return "{\n" + o.map { next + Self.escape($0.0) + ": " + $0.1.text(indent: next) }.joined(separator: ",\n") + "\n\(indent)}"
        }
    }

    /// `s` as a JSON string literal, quotes included.
    public static func escape(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}

extension Ruleset {
    /// The ruleset as JSON: sets with their elements, chains with their rules in nft syntax.
    public var json: JSON {
        .object([
            ("family", .string(family.rawValue)),
            ("table", .string(table)),
            (
                "sets",
                .array(
                    sets.map { s in
                        .object([
                            ("name", .string(s.name)),
                            ("kind", .string(s.kindWord)),
                            ("type", .string(s.typeText)),
                            (
                                "elements",
                                .array(
                                    s.elements.map { e in
                                        var o: [(String, JSON)] = [("key", .string(e.keyText))]
                                        if let v = e.verdict { o.append(("verdict", .string(v.description))) }
                                        if let d = e.data { o.append(("data", .string(d.map(\.description).joined(separator: " . ")))) }
                                        if let c = e.comment { o.append(("comment", .string(c))) }
                                        return .object(o)
                                    })
                            )
                        ])
                    })
            ),
            (
                "chains",
                .array(
                    chains.map { c in
                        var o: [(String, JSON)] = [("name", .string(c.name))]
                        if let b = c.base {
                            o += [
                                ("type", .string(b.type.rawValue)), ("hook", .string(b.hook.rawValue)),
                                ("priority", .number(Int(b.priority)))
                            ]
                        }
                        o.append(("rules", .array(c.rules.map { .string($0.nftText) })))
                        return .object(o)
                    })
            )
        ])
    }
}
