import NFTModel
import SvcnatModel
import Yams

/// A parsed YAML/JSON document as plain values. Converted once from Yams' nodes, whose own
/// key lookup resolves tags with regular expressions on every comparison (slow at 10,000
/// objects).
enum Value: Sendable {
    /// A scalar and whether it was written plain (unquoted), which decides if it may be read as
    /// a number, a boolean or null.
    case scalar(String, plain: Bool)
    /// Keys in their order; a key written twice reads as its last value, as Go's decoder does.
    /// Kubernetes mappings are small, and a scan of a few short keys is cheaper than hashing.
    case mapping([(key: String, value: Value)])
    case sequence([Value])

    /// How much a document may expand to: aliases let a few hundred bytes of YAML stand for
    /// billions of nodes (the "billion laughs"), so the conversion counts what it builds and
    /// stops at a multiple of the input's own size.
    struct Budget {
        var nodes: Int
        var scalarBytes: Int
        /// For `bytes` of input: 4 nodes and 4 bytes of scalar per input byte, and never less
        /// than 10,000 nodes and 1 MB, which no honest manifest exceeds through aliases.
        init(forInputBytes bytes: Int) {
            nodes = max(10_000, 4 * bytes)
            scalarBytes = max(1 << 20, 4 * bytes)
        }
    }

    struct TooLarge: Error, CustomStringConvertible {
        var description: String {
            "expands (through YAML aliases) to more than 4 times its own size; svcnat refuses it"
        }
    }

    /// The document as values, within `budget`.
    static func convert(_ node: Node, _ budget: inout Budget) throws -> Value {
        budget.nodes -= 1
        guard budget.nodes >= 0 else { throw TooLarge() }
        switch node {
        case .scalar(let s):
            budget.scalarBytes -= s.string.utf8.count
            guard budget.scalarBytes >= 0 else { throw TooLarge() }
            return .scalar(s.string, plain: s.style == .plain || s.style == .any)
        case .mapping(let m):
            var d: [(key: String, value: Value)] = []
            d.reserveCapacity(m.count)
            for (k, v) in m {
                if case .scalar(let ks) = k { d.append((ks.string, try convert(v, &budget))) }
            }
            return .mapping(d)
        case .sequence(let seq):
            return .sequence(try seq.map { try convert($0, &budget) })
        case .alias:
            return .scalar("", plain: true)
        }
    }

    /// The value of `key` in a mapping (its last, if written twice).
    subscript(key key: String) -> Value? {
        guard case .mapping(let m) = self else { return nil }
        for member in m.reversed() where member.key == key { return member.value }
        return nil
    }

    /// A top-level scalar field of a mapping node, read without converting the document (so a
    /// document of a kind svcnat skips is never expanded).
    static func peek(_ node: Node, _ key: String, _ inner: String? = nil) -> String? {
        guard case .mapping(let m) = node else { return nil }
        for (k, v) in m {
            guard case .scalar(let ks) = k, ks.string == key else { continue }
            if let inner { return peek(v, inner) }
            if case .scalar(let vs) = v { return vs.string }
            return nil
        }
        return nil
    }
}

/// Where a field is in its object, rendered only for an error ("spec.ports[1].port").
indirect enum FieldPath: CustomStringConvertible {
    case root
    case key(FieldPath, String)
    case index(FieldPath, Int)

    var isRoot: Bool { if case .root = self { true } else { false } }

    var description: String {
        switch self {
        case .root: ""
        case .key(.root, let k): k
        case .key(let p, let k): "\(p).\(k)"
        case .index(let p, let i): "\(p)[\(i)]"
        }
    }
}

/// Field access over a YAML/JSON value that remembers where it is, so every failure names the
/// object and the field path.
struct Field {
    let node: Value?
    /// Where this field is: a step in the context's `steps`, or -1 for the object itself.
    private let at: Int32
    let context: Context

    init(node: Value?, context: Context) {
        self.node = node
        self.at = -1
        self.context = context
    }

    private init(node: Value?, at: Int32, context: Context) {
        self.node = node
        self.at = at
        self.context = context
    }

    /// The field's path, made when a failure names it.
    var path: FieldPath { context.path(at) }

    final class Context {
        let file: String
        var object: String?
        var errors: [InputError] = []
        /// Each field handed out while the object is read, as its parent's step and its own key
        /// or index: a child field costs an append here, not an allocation of its path.
        private var steps: [(parent: Int32, step: Step)] = []
        enum Step {
            case key(String)
            case index(Int)
        }

        /// Where the object is in its document: the root of every path here.
        private let root: FieldPath

        init(file: String, root: FieldPath = .root) {
            self.file = file
            self.root = root
        }

        func step(from parent: Int32, _ step: Step) -> Int32 {
            steps.append((parent, step))
            return Int32(steps.count - 1)
        }

        func path(_ at: Int32) -> FieldPath {
            guard at >= 0 else { return root }
            let (parent, step) = steps[Int(at)]
            switch step {
            case .key(let k): return .key(path(parent), k)
            case .index(let i): return .index(path(parent), i)
            }
        }

        func fail(_ path: FieldPath, _ message: String) {
            errors.append(InputError(file: file, object: object, field: path.isRoot ? nil : path.description, message: message))
        }

        /// A failure at a place that is not a field ("document 2").
        func fail(at place: String, _ message: String) {
            errors.append(InputError(file: file, object: object, field: place.isEmpty ? nil : place, message: message))
        }
    }

    func child(_ key: String) -> Field {
        Field(node: node?[key: key], at: context.step(from: at, .key(key)), context: context)
    }

    subscript(_ key: String) -> Field { child(key) }

    var isNull: Bool {
        guard let node else { return true }
        if case .scalar(let s, true) = node, ["", "~", "null", "Null", "NULL"].contains(s) { return true }
        return false
    }

    var isPresent: Bool { !isNull }

    private func describe(_ node: Value) -> String {
        switch node {
        case .scalar(let s, _): "\"\(s)\""
        case .mapping: "a mapping"
        case .sequence: "a list"
        }
    }

    /// A string value; numbers and booleans written plainly are refused where a string is due.
    var string: String? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s, _) = node else { context.fail(path, "expected a string, found \(describe(node))"); return nil }
        return s
    }

    var int: Int? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s, true) = node, let i = Int(s) else {
            context.fail(path, "expected an integer, found \(describe(node))")
            return nil
        }
        // YAML 1.1 (kubectl's reader) takes 0100 as octal 64, YAML 1.2 as decimal 100: refused
        // rather than guessed.
        let digits = s.hasPrefix("-") || s.hasPrefix("+") ? s.dropFirst() : Substring(s)
        if digits.count > 1 && digits.first == "0" {
            context.fail(path, "\(s) has a leading zero, which YAML 1.1 reads as octal and YAML 1.2 as decimal; write it without")
            return nil
        }
        return i
    }

    var bool: Bool? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s, _) = node, let b = s == "true" ? true : s == "false" ? false : Bool(s.lowercased()) else {
            context.fail(path, "expected true or false, found \(describe(node))")
            return nil
        }
        return b
    }

    /// An integer or a string (Kubernetes' IntOrString).
    var intOrString: IntOrString? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s, let plain) = node else {
            context.fail(path, "expected a port number or name, found \(describe(node))"); return nil
        }
        if plain, let i = Int(s) { return .int(i) }
        return .string(s)
    }

    var list: [Field] {
        guard !isNull, let node else { return [] }
        guard case .sequence(let seq) = node else { context.fail(path, "expected a list, found \(describe(node))"); return [] }
        return seq.enumerated().map { Field(node: $1, at: context.step(from: at, .index($0)), context: context) }
    }

    var stringMap: [String: String] {
        guard !isNull, let node else { return [:] }
        guard case .mapping(let m) = node else { context.fail(path, "expected a mapping, found \(describe(node))"); return [:] }
        var out: [String: String] = [:]
        for (k, v) in m {
            guard case .scalar(let vs, _) = v else {
                context.fail(path, "expected a mapping of strings to strings")
                return [:]
            }
            out[k] = vs
        }
        return out
    }

    var isMapping: Bool { if case .mapping? = node { true } else { false } }

    func fail(_ message: String) { context.fail(path, message) }
}

extension [UInt8] {
    /// The bytes at `range` as a String, for the JSON and YAML readers. Read through a span,
    /// which borrows the array where a slice would retain and release it for every string;
    /// bytes that are not UTF-8 are repaired (U+FFFD) as `String(decoding:)` repairs them.
    func utf8String(_ range: Range<Int>) -> String {
        if let utf8 = try? UTF8Span(validating: span.extracting(range)) { return String(copying: utf8) }
        return String(decoding: self[range], as: UTF8.self)
    }
}
