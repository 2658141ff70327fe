import SvcnatModel

/// JSON text read straight into `Value`s, without YAML and without a tree of the whole document.
///
/// The elements of a list's `items` are located in one checking pass and then built one at a
/// time, so a 10,000-Service `kind: List` never exists as one tree. Values that svcnat never reads
/// (`metadata.managedFields` and `metadata.annotations`) are scanned for syntax and not built.
/// The input is a byte array, read with checked indexing: no pointers.
struct JSONReader {
    private let b: [UInt8]
    private var i = 0
    private var depth = 0

    /// Deeper nesting is refused, so a hostile `[[[[...` cannot overflow the stack.
    static let maxDepth = 200

    /// Object keys under `metadata` that svcnat never reads: skipped, not built.
    static let unreadInMetadata: Set<String> = ["managedFields"]
    /// The one annotation svcnat reads (an EndpointSlice's, for the network programming
    /// latency); the others are skipped, not built.
    static let keptAnnotation = ObjectMeta.triggerTimeAnnotation

    struct SyntaxError: Error, CustomStringConvertible {
        var line: Int
        var column: Int
        var message: String
        var description: String { "line \(line), column \(column): \(message)" }
    }

    /// One top-level value. `streamed` says that it is a list whose `items` are not in `value`
    /// but located by offset.
    struct Document {
        var value: Value
        var streamed: Bool
    }

    init(_ bytes: [UInt8]) { b = bytes }

    /// Whether `text` is JSON rather than YAML: a `.json` file, or text that opens the way only
    /// JSON does (`{"`, `{}`, or `[` before a JSON value). `{apiVersion: v1}` is YAML's flow
    /// style and stays YAML.
    static func looksLikeJSON(_ bytes: [UInt8], file: String) -> Bool {
        if file.lowercased().hasSuffix(".json") { return true }
        var k = 0
        func nextNonSpace() -> UInt8? {
            while k < bytes.count, isSpace(bytes[k]) { k += 1 }
            return k < bytes.count ? bytes[k] : nil
        }
        guard let first = nextNonSpace(), first == UInt8(ascii: "{") || first == UInt8(ascii: "[") else { return false }
        k += 1
        guard let next = nextNonSpace() else { return false }
        if first == UInt8(ascii: "{") { return next == UInt8(ascii: "\"") || next == UInt8(ascii: "}") }
        return "\"{[]-0123456789".utf8.contains(next)
    }

    static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 }

    /// The next top-level value, or nil at the end of the input. Several values one after the
    /// other (a JSON stream, as `kubectl get -o json` of several objects writes) are read one by
    /// one. An object whose `kind` is `List` or ends in `List` has its `items` only checked and
    /// located: their offsets come back (in order) for `item(_:at:)`, so that each can be built
    /// and decoded on its own (on several threads), and the whole list never exists as one tree.
    /// `items` may come before `kind` (kubectl writes keys in order), so they are located first
    /// and built afterwards for an object that turns out not to be a list.
    mutating func nextLocatingItems() throws -> (document: Document, items: [Range<Int>])? {
        let (at, level) = (i, depth)
        do {
            return try locatingItems(fast: true)
        } catch is SyntaxError {
            // The items were skipped by their brackets alone, so the error may have been seen
            // later than where it is: read again in full, which finds the first one.
            (i, depth) = (at, level)
            return try locatingItems(fast: false)
        }
    }

    private mutating func locatingItems(fast: Bool) throws -> (document: Document, items: [Range<Int>])? {
        skipSpace()
        guard i < b.count else { return nil }
        guard b[i] == UInt8(ascii: "{") else { return (Document(value: try value(), streamed: false), []) }
        try enter()
        var m: [(key: String, value: Value)] = []
        var itemsAt: Int?
        var offsets: [Range<Int>] = []
        var key = try firstMember()
        while let k = key {
            if k == "items", b[i] == UInt8(ascii: "[") {
                itemsAt = i
                try enter()
                var more = try firstElement()
                while more {
                    skipSpace()
                    let start = i
                    if fast { try skipItem() } else { try skipValue() }
                    offsets.append(start..<i)
                    more = try nextElement()
                }
                depth -= 1
            } else {
                m.append((k, try value(in: k)))
            }
            key = try nextMember()
        }
        depth -= 1
        guard let at = itemsAt else { return (Document(value: .mapping(m), streamed: false), []) }
        if case .scalar(let kind, _)? = Value.mapping(m)[key: "kind"], kind.hasSuffix("List") {
            return (Document(value: .mapping(m), streamed: true), offsets)
        }
        let end = i
        i = at
        defer { i = end }
        m.append(("items", try value()))
        return (Document(value: .mapping(m), streamed: false), [])
    }

    /// The list item at `range` of `bytes` (a range `nextLocatingItems` gave), checked in full.
    static func item(_ bytes: [UInt8], at range: Range<Int>) throws -> Value {
        var r = JSONReader(bytes)
        r.i = range.lowerBound
        r.depth = 2
        let v = try r.value()
        guard r.i == range.upperBound else { throw r.fail("unexpected text after the list item") }
        return v
    }

    /// The whole input as one value (an API response or a watch line); only whitespace may
    /// follow it.
    mutating func single() throws -> Value? {
        skipSpace()
        guard i < b.count else { return nil }
        let v = try value()
        skipSpace()
        guard i == b.count else { throw fail("unexpected text after the JSON value") }
        return v
    }

    // MARK: - Grammar

    private mutating func value(in key: String = "") throws -> Value {
        skipSpace()
        guard i < b.count else { throw fail("unexpected end of input, expected a value") }
        switch b[i] {
        case UInt8(ascii: "{"):
            try enter()
            var m: [(key: String, value: Value)] = []
            // Room for a Kubernetes object's usual mapping at once, instead of growing 1, 2, 4, 8.
            m.reserveCapacity(8)
            let metadata = key == "metadata"
            var next = try firstMember()
            while let k = next {
                if metadata, Self.unreadInMetadata.contains(k) {
                    try skipValue()
                } else if metadata, k == "annotations" {
                    m.append((k, try keptAnnotations()))
                } else {
                    m.append((k, try value(in: k)))
                }
                next = try nextMember()
            }
            depth -= 1
            return .mapping(m)
        case UInt8(ascii: "["):
            try enter()
            var a: [Value] = []
            var more = try firstElement()
            while more {
                a.append(try value())
                more = try nextElement()
            }
            depth -= 1
            return .sequence(a)
        case UInt8(ascii: "\""):
            return .scalar(try string(), plain: false)
        default:
            return .scalar(try literal(), plain: true)
        }
    }

    /// `metadata.annotations` with only `keptAnnotation` built (when it is there); anything but
    /// an object is skipped and read as an empty mapping.
    private mutating func keptAnnotations() throws -> Value {
        skipSpace()
        guard i < b.count, b[i] == UInt8(ascii: "{") else { try skipValue(); return .mapping([]) }
        try enter()
        var kept: [(key: String, value: Value)] = []
        var next = try firstMember()
        while let k = next {
            if k == Self.keptAnnotation { kept.append((k, try value())) } else { try skipValue() }
            next = try nextMember()
        }
        depth -= 1
        return .mapping(kept)
    }

    /// A list item skipped by its brackets and strings alone, which is several times faster than
    /// `skipValue`: the item is checked in full when it is built (`item(_:at:)`, which must end
    /// where this did). Where the brackets never close, `skipValue` finds the exact error.
    private mutating func skipItem() throws {
        guard b[i] == UInt8(ascii: "{") || b[i] == UInt8(ascii: "["), let end = Self.closing(b, from: i) else {
            return try skipValue()
        }
        i = end
    }

    /// Just past the bracket that closes the one at `start`, or nil when none does. Locals, and
    /// a span rather than the array: the loop runs in registers.
    private static func closing(_ b: [UInt8], from start: Int) -> Int? {
        let bytes = b.span
        let n = bytes.count
        var k = start
        var open = 0
        while k < n {
            let c = bytes[k]
            k += 1
            if c == UInt8(ascii: "\"") {
                while k < n {
                    let d = bytes[k]
                    k += 1
                    if d == UInt8(ascii: "\"") { break }
                    if d == UInt8(ascii: "\\") { k += 1 }
                }
            } else if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
                open += 1
            } else if c == UInt8(ascii: "}") || c == UInt8(ascii: "]") {
                open -= 1
                if open == 0 { return k }
            }
        }
        return nil
    }

    /// The same grammar as `value`, building nothing.
    private mutating func skipValue() throws {
        skipSpace()
        guard i < b.count else { throw fail("unexpected end of input, expected a value") }
        switch b[i] {
        case UInt8(ascii: "{"):
            try enter()
            var next = try firstMember()
            while next != nil {
                try skipValue()
                next = try nextMember()
            }
            depth -= 1
        case UInt8(ascii: "["):
            try enter()
            var more = try firstElement()
            while more {
                try skipValue()
                more = try nextElement()
            }
            depth -= 1
        case UInt8(ascii: "\""): try skipString()
        default: _ = try literal()
        }
    }

    private mutating func enter() throws {
        depth += 1
        guard depth <= Self.maxDepth else { throw fail("nested deeper than \(Self.maxDepth) levels") }
        i += 1
    }

    /// After an object's `{`: its first key, read through its `:`, or nil (and the `}` read)
    /// when it is empty.
    private mutating func firstMember() throws -> String? {
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return nil }
        return try memberKey()
    }

    /// After a member's value: the next key, or nil at the object's `}`.
    private mutating func nextMember() throws -> String? {
        skipSpace()
        guard i < b.count else { throw fail("unexpected end of input, expected ',' or '}'") }
        if b[i] == UInt8(ascii: "}") { i += 1; return nil }
        guard b[i] == UInt8(ascii: ",") else { throw fail("expected ',' or '}'") }
        i += 1
        return try memberKey()
    }

    private mutating func memberKey() throws -> String {
        skipSpace()
        guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a quoted key") }
        let key = try string()
        skipSpace()
        guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':' after the key \"\(key)\"") }
        i += 1
        skipSpace()
        guard i < b.count else { throw fail("unexpected end of input, expected a value") }
        return key
    }

    /// After an array's `[`: whether an element follows (false, and the `]` read, when empty).
    private mutating func firstElement() throws -> Bool {
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return false }
        return true
    }

    /// After an element: whether another follows (false at the array's `]`).
    private mutating func nextElement() throws -> Bool {
        skipSpace()
        guard i < b.count else { throw fail("unexpected end of input, expected ',' or ']'") }
        if b[i] == UInt8(ascii: "]") { i += 1; return false }
        guard b[i] == UInt8(ascii: ",") else { throw fail("expected ',' or ']'") }
        i += 1
        return true
    }

    private mutating func skipSpace() {
        while i < b.count, Self.isSpace(b[i]) { i += 1 }
    }

    private static let words: [(String, [UInt8])] = ["true", "false", "null"].map { ($0, Array($0.utf8)) }

    /// A number, `true`, `false` or `null`, as its text.
    private mutating func literal() throws -> String {
        let start = i
        for (word, bytes) in Self.words where b[i] == bytes[0] {
            guard i + bytes.count <= b.count, b[i..<i + bytes.count].elementsEqual(bytes) else { break }
            i += bytes.count
            return word
        }
        // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
        func digits() -> Int {
            let s = i
            while i < b.count, b[i] >= UInt8(ascii: "0"), b[i] <= UInt8(ascii: "9") { i += 1 }
            return i - s
        }
        if i < b.count, b[i] == UInt8(ascii: "-") { i += 1 }
        let intStart = i
        let n = digits()
        guard n > 0 else {
            i = start
            throw fail("expected a value (a string, number, object, list, true, false or null)")
        }
        if n > 1, b[intStart] == UInt8(ascii: "0") {
            i = intStart
            throw fail("a number with a leading zero is not JSON")
        }
        if i < b.count, b[i] == UInt8(ascii: ".") {
            i += 1
            guard digits() > 0 else { throw fail("expected digits after '.'") }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard digits() > 0 else { throw fail("expected digits in the exponent") }
        }
        return b.utf8String(start..<i)
    }

    /// Where the run of plain string bytes from `start` ends: at a quote, a backslash, a control
    /// character or the end. Locals and a span, so the loop runs in registers.
    private static func plainRun(_ b: [UInt8], from start: Int) -> Int {
        let bytes = b.span
        var k = start
        while k < bytes.count {
            let c = bytes[k]
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") || c < 0x20 { return k }
            k += 1
        }
        return k
    }

    /// A string at its opening quote.
    private mutating func string() throws -> String {
        i += 1
        let start = i
        i = Self.plainRun(b, from: i)
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                let s = b.utf8String(start..<i)
                i += 1
                return s
            }
            if c == UInt8(ascii: "\\") { return try escaped(from: start) }
            if c < 0x20 { throw fail("a control character in a string (escape it)") }
            i += 1
        }
        throw fail("a string without its closing quote", at: start - 1)
    }

    private mutating func skipString() throws {
        let open = i
        i += 1
        while i < b.count {
            i = Self.plainRun(b, from: i)
            guard i < b.count else { break }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; return }
            if c == UInt8(ascii: "\\") {
                i += 1
                guard i < b.count else { break }
                if b[i] == UInt8(ascii: "u") {
                    _ = try hex4()
                } else {
                    _ = try escapeCode(b[i])
                    i += 1
                }
                continue
            }
            if c < 0x20 { throw fail("a control character in a string (escape it)") }
            i += 1
        }
        throw fail("a string without its closing quote", at: open)
    }

    /// The rest of a string that has escapes, from its first character at `start`.
    private mutating func escaped(from start: Int) throws -> String {
        var out = Array(b[start..<i])
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return String(decoding: out, as: UTF8.self)
            }
            if c < 0x20 { throw fail("a control character in a string (escape it)") }
            guard c == UInt8(ascii: "\\") else { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { break }
            if b[i] != UInt8(ascii: "u") {
                out.append(try escapeCode(b[i]))
                i += 1
                continue
            }
            var scalar = try hex4()
            if (0xD800..<0xDC00).contains(scalar) {
                // A surrogate pair: the low half must follow as its own \u escape.
                guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                    throw fail("a lone UTF-16 surrogate in \\u escapes")
                }
                i += 1
                let low = try hex4()
                guard (0xDC00..<0xE000).contains(low) else { throw fail("a lone UTF-16 surrogate in \\u escapes") }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else if (0xDC00..<0xE000).contains(scalar) {
                throw fail("a lone UTF-16 surrogate in \\u escapes")
            }
            out += Array(String(Character(Unicode.Scalar(scalar)!)).utf8)
        }
        throw fail("a string without its closing quote", at: start - 1)
    }

    /// The byte a one-letter escape stands for (at its letter).
    private func escapeCode(_ c: UInt8) throws -> UInt8 {
        switch c {
        case UInt8(ascii: "\""): return c
        case UInt8(ascii: "\\"): return c
        case UInt8(ascii: "/"): return c
        case UInt8(ascii: "b"): return 0x08
        case UInt8(ascii: "f"): return 0x0C
        case UInt8(ascii: "n"): return 0x0A
        case UInt8(ascii: "r"): return 0x0D
        case UInt8(ascii: "t"): return 0x09
        default: throw fail("an unknown escape \\\(Character(Unicode.Scalar(c)))")
        }
    }

    /// `uXXXX` at its `u`, as a number.
    private mutating func hex4() throws -> UInt32 {
        i += 1
        guard i + 4 <= b.count else { throw fail("a \\u escape needs four hex digits") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard let d = Character(Unicode.Scalar(b[i])).hexDigitValue else { throw fail("a \\u escape needs four hex digits") }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    /// The error at `at` (or where reading is), with its 1-based line and column.
    func fail(_ message: String, at: Int? = nil) -> SyntaxError {
        let pos = min(at ?? i, b.count)
        var line = 1
        var lineStart = 0
        for k in 0..<pos where b[k] == 0x0A {
            line += 1
            lineStart = k + 1
        }
        return SyntaxError(line: line, column: pos - lineStart + 1, message: message)
    }
}
