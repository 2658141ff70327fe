/// The YAML that manifests are written in, read straight into `Value`s, several times faster
/// than building Yams' nodes first.
///
/// It reads block mappings and sequences, flow collections, plain, single- and double-quoted
/// scalars, comments and `---` documents. Anything else (anchors and aliases, tags, merge keys,
/// block scalars, multi-line scalars, directives, tabs in indentation, duplicate keys, and
/// everything that is not valid YAML) makes it give up on the whole file: `read` returns nil and
/// the file goes to Yams, which reads all of YAML with its limits against alias bombs and gives
/// its own errors. So where this reader answers, it answers as Yams would (a test compares the
/// two), and where it does not, Yams does.
struct YAMLReader {
    private let b: [UInt8]
    private var lines: [Line] = []
    private var at = 0  // the current line
    private var depth = 0

    /// A line: its bytes `start..<end` (without the newline), and where its content begins
    /// (after the indentation, or after a sequence entry's `- ` when a node starts there).
    private struct Line {
        var start: Int
        var end: Int
        var content: Int
        var indent: Int { content - start }
    }

    /// Outside what this reader takes: the file goes to Yams.
    private struct Unsupported: Error {}

    static let maxDepth = 100

    init(_ bytes: [UInt8]) { b = bytes }

    /// The documents, or nil when the file is not in the subset this reader takes.
    mutating func read() -> [Value]? {
        do { return try documents() } catch { return nil }
    }

    private mutating func documents() throws -> [Value] {
        try splitLines()
        var docs: [Value] = []
        var open = false  // a `---` was read and its document is still to come
        while true {
            skipBlankLines()
            guard at < lines.count else {
                if open { docs.append(.scalar("", plain: true)) }
                return docs
            }
            if isDocumentStart(lines[at]) {
                guard isBareDocumentStart(lines[at]) else { throw Unsupported() }
                if open { docs.append(.scalar("", plain: true)) }  // `---` right after `---`
                open = true
                at += 1
                continue
            }
            docs.append(try node(parentIndent: -1))
            open = false
            skipBlankLines()
            // Only a new document may follow a document's root.
            guard at == lines.count || isDocumentStart(lines[at]) else { throw Unsupported() }
        }
    }

    // MARK: - Lines

    private mutating func splitLines() throws {
        lines = try Self.lines(of: b)
    }

    /// Each line's start, end (before a CR) and first non-space byte; a span in locals, so the
    /// scan runs in registers.
    private static func lines(of b: [UInt8]) throws -> [Line] {
        let bytes = b.span
        let n = bytes.count
        var out: [Line] = []
        out.reserveCapacity(n / 24)
        // A byte-order mark is left to Yams.
        if n >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF { throw Unsupported() }
        var start = 0
        while start < n {
            var k = start
            while k < n, bytes[k] != 0x0A { k += 1 }
            var end = k
            if end > start, bytes[end - 1] == 0x0D { end -= 1 }
            var c = start
            while c < end, bytes[c] == 0x20 { c += 1 }
            if c < end, bytes[c] == 0x09 { throw Unsupported() }  // a tab in indentation
            out.append(Line(start: start, end: end, content: c))
            start = k + 1
        }
        return out
    }

    /// Blank, or only a comment.
    private func isBlank(_ l: Line) -> Bool {
        var c = l.content
        while c < l.end, b[c] == 0x20 || b[c] == 0x09 { c += 1 }
        return c == l.end || b[c] == UInt8(ascii: "#")
    }

    private mutating func skipBlankLines() {
        while at < lines.count, isBlank(lines[at]) { at += 1 }
    }

    /// A `---` line. Content after it on the same line is left to Yams.
    private func isDocumentStart(_ l: Line) -> Bool {
        guard l.indent == 0, l.end - l.start >= 3, b[l.start] == UInt8(ascii: "-"), b[l.start + 1] == UInt8(ascii: "-"),
            b[l.start + 2] == UInt8(ascii: "-")
        else { return false }
        return l.end - l.start == 3 || b[l.start + 3] == 0x20
    }

    /// Whether a `---` line carries nothing but spaces and a comment.
    private func isBareDocumentStart(_ l: Line) -> Bool {
        var c = l.start + 3
        while c < l.end, b[c] == 0x20 { c += 1 }
        return c == l.end || b[c] == UInt8(ascii: "#")
    }

    private func startsDirectiveOrEnd(_ l: Line) -> Bool {
        guard l.indent == 0, l.end > l.start else { return false }
        if b[l.start] == UInt8(ascii: "%") { return true }
        return l.end - l.start >= 3 && b[l.start] == UInt8(ascii: ".") && b[l.start + 1] == UInt8(ascii: ".")
            && b[l.start + 2] == UInt8(ascii: ".")
    }

    // MARK: - Block nodes

    /// The node whose first line is the current one, more indented than its parent.
    private mutating func node(parentIndent: Int) throws -> Value {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw Unsupported() }
        let line = lines[at]
        if isDocumentStart(line) || startsDirectiveOrEnd(line) { throw Unsupported() }
        if isSequenceEntry(line) { return try sequence(indent: line.indent) }
        if try mappingKeyEnd(line) != nil { return try mapping(indent: line.indent) }
        // A scalar or flow collection alone on its line(s).
        var c = line.content
        let v = try inlineValue(&c, line: line)
        try expectLineEnd(c)
        at += 1
        try noContinuation(beyond: parentIndent)
        return v
    }

    private func isSequenceEntry(_ l: Line) -> Bool {
        guard l.content < l.end, b[l.content] == UInt8(ascii: "-") else { return false }
        return l.content + 1 == l.end || b[l.content + 1] == 0x20
    }

    private mutating func sequence(indent: Int) throws -> Value {
        var items: [Value] = []
        while at < lines.count {
            let line = lines[at]
            guard line.indent == indent, isSequenceEntry(line), !isDocumentStart(line) else { break }
            var c = line.content + 1
            while c < line.end, b[c] == 0x20 { c += 1 }
            if c == line.end || b[c] == UInt8(ascii: "#") {
                // `-` alone: the item is on the lines below, or null.
                at += 1
                items.append(try nested(under: indent, sequenceAllowedAtSameIndent: false))
            } else {
                // The item starts on this line, at its own column.
                lines[at].content = c
                items.append(try node(parentIndent: indent))
            }
            skipBlankLines()
        }
        try noStrayIndent(indent)
        return .sequence(items)
    }

    /// The value of a `key:` or `-` whose line ends there: the node on the lines below (more
    /// indented, or a sequence at the key's own indent), or null.
    private mutating func nested(under indent: Int, sequenceAllowedAtSameIndent: Bool) throws -> Value {
        skipBlankLines()
        guard at < lines.count else { return .scalar("", plain: true) }
        let next = lines[at]
        if isDocumentStart(next) { return .scalar("", plain: true) }
        if next.indent > indent { return try node(parentIndent: indent) }
        if sequenceAllowedAtSameIndent, next.indent == indent, isSequenceEntry(next) { return try sequence(indent: indent) }
        return .scalar("", plain: true)
    }

    private mutating func mapping(indent: Int) throws -> Value {
        var members: [(key: String, value: Value)] = []
        members.reserveCapacity(8)
        while at < lines.count {
            let line = lines[at]
            guard line.indent == indent, !isDocumentStart(line), !isSequenceEntry(line) else { break }
            guard let keyEnd = try mappingKeyEnd(line) else { throw Unsupported() }
            let key = try self.key(line.content, keyEnd)
            guard key != "<<", !members.contains(where: { $0.key == key }) else { throw Unsupported() }
            var c = keyEnd + 1
            while c < line.end, b[c] == 0x20 { c += 1 }
            let value: Value
            if c == line.end || b[c] == UInt8(ascii: "#") {
                at += 1
                value = try nested(under: indent, sequenceAllowedAtSameIndent: true)
            } else {
                value = try inlineValue(&c, line: line)
                try expectLineEnd(c)
                at += 1
                try noContinuation(beyond: indent)
            }
            members.append((key, value))
            skipBlankLines()
        }
        try noStrayIndent(indent)
        return .mapping(members)
    }

    /// After a block collection at `indent`: the next line must be less indented (the parent's)
    /// or a new document; a deeper one is an error Yams will word.
    private func noStrayIndent(_ indent: Int) throws {
        guard at < lines.count else { return }
        let l = lines[at]
        if isDocumentStart(l) { return }
        if l.indent > indent { throw Unsupported() }
    }

    /// After a value that ended its line: a more indented line that follows would continue it
    /// (a multi-line scalar), which this reader leaves to Yams.
    private mutating func noContinuation(beyond indent: Int) throws {
        skipBlankLines()
        guard at < lines.count else { return }
        let l = lines[at]
        if !isDocumentStart(l), l.indent > indent { throw Unsupported() }
    }

    /// Where the `:` of a block mapping key is on `l`, or nil when the line is not a `key:`.
    private func mappingKeyEnd(_ l: Line) throws -> Int? {
        var c = l.content
        guard c < l.end else { return nil }
        let first = b[c]
        if first == UInt8(ascii: "\"") || first == UInt8(ascii: "'") {
            c = try skipQuoted(c, l.end)
            guard c < l.end, b[c] == UInt8(ascii: ":"), c + 1 == l.end || b[c + 1] == 0x20 else {
                // A quoted scalar that is no key, or a key not followed by ": ".
                var k = c
                while k < l.end, b[k] == 0x20 { k += 1 }
                if k < l.end, b[k] == UInt8(ascii: ":") { throw Unsupported() }
                return nil
            }
            return c
        }
        if Self.indicators.contains(first) { return nil }
        while c < l.end {
            let ch = b[c]
            if ch == UInt8(ascii: ":"), c + 1 == l.end || b[c + 1] == 0x20 { return c }
            if ch == UInt8(ascii: "#"), c > l.content, b[c - 1] == 0x20 || b[c - 1] == 0x09 { return nil }
            c += 1
        }
        return nil
    }

    /// The key text between `from` and its `:`.
    private func key(_ from: Int, _ colon: Int) throws -> String {
        let first = b[from]
        if first == UInt8(ascii: "\"") || first == UInt8(ascii: "'") {
            var c = from
            let s = try quoted(&c, end: colon)
            return s
        }
        var e = colon
        while e > from, b[e - 1] == 0x20 || b[e - 1] == 0x09 { e -= 1 }
        guard e > from else { throw Unsupported() }  // an empty key
        let k = b.utf8String(from..<e)
        if first == UInt8(ascii: "?") || first == UInt8(ascii: "-") && (from + 1 == e || b[from + 1] == 0x20) { throw Unsupported() }
        return k
    }

    /// Bytes that cannot open a plain scalar in block context.
    private static let indicators = ByteClass("[]{},#&*!|>'\"%@`")

    /// A value that starts at `c` on line `l`: a flow collection (which may go on over the next
    /// lines), a quoted scalar, or a plain scalar to the end of the line or a comment.
    private mutating func inlineValue(_ c: inout Int, line l: Line) throws -> Value {
        let first = b[c]
        switch first {
        case UInt8(ascii: "["), UInt8(ascii: "{"):
            var pos = c
            let v = try flow(&pos)
            // The flow may have ended on a later line: that line becomes the current one. Its
            // lines must be more indented than the one it opened on (what YAML asks of them is
            // left to Yams).
            while at + 1 < lines.count, pos > lines[at].end {
                at += 1
                guard isBlank(lines[at]) || lines[at].indent > l.indent else { throw Unsupported() }
            }
            c = pos
            return v
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            return .scalar(try quoted(&c, end: l.end), plain: false)
        default:
            if Self.indicators.contains(first) { throw Unsupported() }
            if first == UInt8(ascii: "-") || first == UInt8(ascii: "?") || first == UInt8(ascii: ":"),
                c + 1 == l.end || b[c + 1] == 0x20
            {
                throw Unsupported()
            }
            let start = c
            var e = c
            while c < l.end {
                let ch = b[c]
                if ch == UInt8(ascii: ":"), c + 1 == l.end || b[c + 1] == 0x20 { throw Unsupported() }  // `a: b: c`
                if ch == UInt8(ascii: "#"), b[c - 1] == 0x20 || b[c - 1] == 0x09 { break }
                c += 1
                if ch != 0x20 && ch != 0x09 { e = c }
            }
            return .scalar(b.utf8String(start..<e), plain: true)
        }
    }

    /// Only spaces and a comment may follow a value on its line (`c` is in the line the value
    /// ended on).
    private func expectLineEnd(_ c: Int) throws {
        let end = lines[at].end
        var k = c
        while k < end, b[k] == 0x20 || b[k] == 0x09 { k += 1 }
        guard k == end || (b[k] == UInt8(ascii: "#") && (k == 0 || b[k - 1] == 0x20 || b[k - 1] == 0x09)) else {
            throw Unsupported()
        }
    }

    // MARK: - Scalars

    /// Past a quoted scalar that opens at `c`, on one line.
    private func skipQuoted(_ c: Int, _ end: Int) throws -> Int {
        var pos = c
        _ = try quoted(&pos, end: end)
        return pos
    }

    /// A single- or double-quoted scalar opening at `c`, which must close before `end`.
    private func quoted(_ c: inout Int, end: Int) throws -> String {
        let q = b[c]
        c += 1
        var out: [UInt8] = []
        while c < end {
            let ch = b[c]
            if q == UInt8(ascii: "'") {
                if ch == q {
                    if c + 1 < end, b[c + 1] == q {
                        out.append(q)
                        c += 2
                        continue
                    }
                    c += 1
                    return String(decoding: out, as: UTF8.self)
                }
                out.append(ch)
                c += 1
                continue
            }
            if ch == q {
                c += 1
                return String(decoding: out, as: UTF8.self)
            }
            guard ch == UInt8(ascii: "\\") else {
                out.append(ch)
                c += 1
                continue
            }
            c += 1
            guard c < end else { throw Unsupported() }
            let e = b[c]
            c += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: " "): out.append(0x20)
            case UInt8(ascii: "0"): out.append(0)
            case UInt8(ascii: "a"): out.append(0x07)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "t"), 0x09: out.append(0x09)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "v"): out.append(0x0B)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "e"): out.append(0x1B)
            case UInt8(ascii: "x"), UInt8(ascii: "u"), UInt8(ascii: "U"):
                let n = e == UInt8(ascii: "x") ? 2 : e == UInt8(ascii: "u") ? 4 : 8
                guard c + n <= end else { throw Unsupported() }
                var v: UInt32 = 0
                for k in c..<c + n {
                    guard let d = Character(Unicode.Scalar(b[k])).hexDigitValue else { throw Unsupported() }
                    v = v << 4 | UInt32(d)
                }
                c += n
                guard let s = Unicode.Scalar(v) else { throw Unsupported() }
                out += Array(String(Character(s)).utf8)
            default: throw Unsupported()
            }
        }
        throw Unsupported()  // it goes on over the next line
    }

    // MARK: - Flow collections

    /// A flow collection opening at `c`; it may span lines (newlines count as spaces).
    private mutating func flow(_ c: inout Int) throws -> Value {
        depth += 1
        defer { depth -= 1 }
        guard depth <= Self.maxDepth else { throw Unsupported() }
        let open = b[c]
        let close = open == UInt8(ascii: "[") ? UInt8(ascii: "]") : UInt8(ascii: "}")
        c += 1
        var items: [Value] = []
        var members: [(key: String, value: Value)] = []
        try flowSpace(&c)
        if b[c] == close {
            c += 1
            return open == UInt8(ascii: "[") ? .sequence([]) : .mapping([])
        }
        while true {
            try flowSpace(&c)
            if open == UInt8(ascii: "[") {
                let v = try flowValue(&c)
                try flowSpace(&c)
                if b[c] == UInt8(ascii: ":") { throw Unsupported() }  // a single-pair mapping
                items.append(v)
            } else {
                guard b[c] != UInt8(ascii: "[") && b[c] != UInt8(ascii: "{") else { throw Unsupported() }
                guard case .scalar(let k, _) = try flowValue(&c) else { throw Unsupported() }
                try flowSpace(&c)
                guard b[c] == UInt8(ascii: ":") else { throw Unsupported() }  // a key without a value
                c += 1
                guard c < b.count, b[c] == 0x20 || b[c] == 0x0A || b[c] == 0x0D else { throw Unsupported() }
                try flowSpace(&c)
                if b[c] == UInt8(ascii: ",") || b[c] == close { throw Unsupported() }  // `{a: }`
                let v = try flowValue(&c)
                guard k != "<<", !members.contains(where: { $0.key == k }) else { throw Unsupported() }
                members.append((k, v))
            }
            try flowSpace(&c)
            if b[c] == close {
                c += 1
                return open == UInt8(ascii: "[") ? .sequence(items) : .mapping(members)
            }
            guard b[c] == UInt8(ascii: ",") else { throw Unsupported() }
            c += 1
            try flowSpace(&c)
            if b[c] == close { throw Unsupported() }  // a trailing comma
        }
    }

    /// Spaces, newlines and comments inside a flow collection; the input must go on.
    private func flowSpace(_ c: inout Int) throws {
        while c < b.count {
            let ch = b[c]
            if ch == 0x20 || ch == 0x0A || ch == 0x0D {
                c += 1
            } else if ch == UInt8(ascii: "#"), c > 0, b[c - 1] == 0x20 || b[c - 1] == 0x0A {
                while c < b.count, b[c] != 0x0A { c += 1 }
            } else if ch == 0x09 {
                throw Unsupported()
            } else {
                return
            }
        }
        throw Unsupported()
    }

    private static let flowEnds = ByteClass(",[]{}")

    private mutating func flowValue(_ c: inout Int) throws -> Value {
        let first = b[c]
        if first == UInt8(ascii: "[") || first == UInt8(ascii: "{") { return try flow(&c) }
        if first == UInt8(ascii: "\"") || first == UInt8(ascii: "'") {
            var e = c
            while e < b.count, b[e] != 0x0A { e += 1 }
            return .scalar(try quoted(&c, end: e), plain: false)
        }
        if Self.indicators.contains(first) { throw Unsupported() }
        if first == UInt8(ascii: "-") || first == UInt8(ascii: "?") || first == UInt8(ascii: ":"),
            c + 1 >= b.count || b[c + 1] == 0x20 || b[c + 1] == 0x0A
        {
            throw Unsupported()
        }
        let start = c
        var e = c
        while c < b.count {
            let ch = b[c]
            if Self.flowEnds.contains(ch) || ch == 0x0A || ch == 0x0D { break }
            if ch == UInt8(ascii: ":"), c + 1 < b.count, b[c + 1] == 0x20 || b[c + 1] == 0x0A || Self.flowEnds.contains(b[c + 1]) {
                break
            }
            if ch == UInt8(ascii: "#"), b[c - 1] == 0x20 { throw Unsupported() }
            c += 1
            if ch != 0x20 && ch != 0x09 { e = c }
        }
        // A plain scalar that goes on over a newline is folded by YAML: left to Yams.
        if c < b.count, b[c] == 0x0A || b[c] == 0x0D {
            var k = c
            try flowSpace(&k)
            guard Self.flowEnds.contains(b[k]) || b[k] == UInt8(ascii: ":") else { throw Unsupported() }
        }
        guard e > start else { throw Unsupported() }
        return .scalar(b.utf8String(start..<e), plain: true)
    }
}

/// A set of ASCII bytes as a table of 256 flags: a lookup is one load, where a `Set<UInt8>`
/// hashes.
struct ByteClass: Sendable {
    private let member: [Bool]

    init(_ chars: String) {
        var m = [Bool](repeating: false, count: 256)
        for c in chars.utf8 { m[Int(c)] = true }
        member = m
    }

    func contains(_ c: UInt8) -> Bool { member[Int(c)] }
}
