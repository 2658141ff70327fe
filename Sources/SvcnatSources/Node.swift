import SvcnatModel
import Yams

/// Field access over a YAML/JSON node that remembers where it is, so every failure names the
/// object and the field path.
struct Field {
    let node: Node?
    let path: String
    let context: Context

    final class Context {
        let file: String
        var object: String?
        var errors: [InputError] = []
        init(file: String) { self.file = file }

        func fail(_ path: String, _ message: String) {
            errors.append(InputError(file: file, object: object, field: path.isEmpty ? nil : path, message: message))
        }
    }

    func child(_ key: String) -> Field {
        let p = path.isEmpty ? key : "\(path).\(key)"
        guard case .mapping(let m)? = node else { return Field(node: nil, path: p, context: context) }
        return Field(node: m[key], path: p, context: context)
    }

    subscript(_ key: String) -> Field { child(key) }

    var isNull: Bool {
        guard let node else { return true }
        if case .scalar(let s) = node, s.tag == .init(.null) || (s.style == .plain && ["", "~", "null", "Null", "NULL"].contains(s.string)) { return true }
        return false
    }

    var isPresent: Bool { !isNull }

    private func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let s): "\"\(s.string)\""
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    /// A string value; numbers and booleans written plainly are refused where a string is due.
    var string: String? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s) = node else { context.fail(path, "expected a string, found \(describe(node))"); return nil }
        return s.string
    }

    var int: Int? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s) = node, s.style == .plain || s.style == .any, let i = Int(s.string) else {
            context.fail(path, "expected an integer, found \(describe(node))")
            return nil
        }
        return i
    }

    var bool: Bool? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s) = node, let b = Bool(s.string.lowercased()) else {
            context.fail(path, "expected true or false, found \(describe(node))")
            return nil
        }
        return b
    }

    /// An integer or a string (Kubernetes' IntOrString).
    var intOrString: IntOrString? {
        guard !isNull, let node else { return nil }
        guard case .scalar(let s) = node else { context.fail(path, "expected a port number or name, found \(describe(node))"); return nil }
        if (s.style == .plain || s.style == .any), let i = Int(s.string) { return .int(i) }
        return .string(s.string)
    }

    var list: [Field] {
        guard !isNull, let node else { return [] }
        guard case .sequence(let seq) = node else { context.fail(path, "expected a list, found \(describe(node))"); return [] }
        return seq.enumerated().map { Field(node: $1, path: "\(path)[\($0)]", context: context) }
    }

    var stringMap: [String: String] {
        guard !isNull, let node else { return [:] }
        guard case .mapping(let m) = node else { context.fail(path, "expected a mapping, found \(describe(node))"); return [:] }
        var out: [String: String] = [:]
        for (k, v) in m {
            guard case .scalar(let ks) = k, case .scalar(let vs) = v else {
                context.fail(path, "expected a mapping of strings to strings")
                return [:]
            }
            out[ks.string] = vs.string
        }
        return out
    }

    var isMapping: Bool { if case .mapping? = node { true } else { false } }

    func fail(_ message: String) { context.fail(path, message) }
}
