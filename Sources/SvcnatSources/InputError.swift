import NFTModel
import SvcnatModel

/// Something wrong with the input, located as precisely as we can: file, object, field.
public struct InputError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String
    /// "Service codereview/web", or nil when the problem is with the file itself.
    public var object: String?
    /// "spec.ports[1].port", or nil.
    public var field: String?
    public var message: String

    public init(file: String, object: String? = nil, field: String? = nil, message: String) {
        self.file = file
        self.object = object
        self.field = field
        self.message = message
    }

    /// Names and messages can come from files and servers: control characters are escaped.
    public var description: String {
        [file, object, field, message].compactMap { $0 }.joined(separator: ": ").escapingControlCharacters
    }
}

extension String {
    /// The text with control characters (CR, LF, ESC, ...) written as `\u{..}`, so text from a
    /// file or a server cannot forge log lines or drive a terminal.
    public var escapingControlCharacters: String {
        guard unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return self }
        var out = ""
        for u in unicodeScalars {
            if u.properties.generalCategory == .control {
                out += "\\u{" + String(u.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }
}

/// All the input errors found in one read; svcnat reports every one of them.
public struct InputErrors: Error, CustomStringConvertible, Sendable {
    public var errors: [InputError]
    public init(errors: [InputError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

public struct Warning: CustomStringConvertible, Sendable, Equatable {
    public var text: String
    public var description: String { text }
}

/// An object the input holds that svcnat does not program: of a kind it does not read, or
/// labelled for another proxy. Said in one summary line, each one with `-v`.
public struct SkippedObject: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var kind: String
    /// nil for a cluster-scoped kind.
    public var namespace: String?
    public var name: String
    /// Why, when it is not the kind: "labelled service.kubernetes.io/service-proxy-name=...".
    public var reason: String?

    public var object: String { namespace.map { "\(kind) \($0)/\(name)" } ?? "\(kind) \(name)" }

    public var description: String {
        "\(file): \(object): " + (reason.map { "\($0); skipped" } ?? "kind \(kind) is not used by svcnat; skipped")
    }

    /// One line per reason (`skipped 51 objects of 17 kinds not used by svcnat; -v lists
    /// them`), or with `verbose` one line per object.
    public static func summary(_ skipped: [SkippedObject], verbose: Bool) -> [String] {
        if verbose { return skipped.map(\.description) }
        func objects(_ n: Int) -> String { n == 1 ? "1 object" : "\(n) objects" }
        var out: [String] = []
        let byKind = skipped.filter { $0.reason == nil }
        if !byKind.isEmpty {
            let kinds = Set(byKind.map(\.kind)).count
            out.append("skipped \(objects(byKind.count)) of \(kinds == 1 ? "1 kind" : "\(kinds) kinds") not used by svcnat; -v lists them")
        }
        var reasons: [String: Int] = [:]
        for s in skipped { if let r = s.reason { reasons[Self.reasonGroup(r), default: 0] += 1 } }
        for (r, n) in reasons.sorted(by: { $0.key < $1.key }) { out.append("skipped \(objects(n)) \(r); -v lists them") }
        return out
    }

    /// A reason without the label's value, so Services of several other proxies are one line.
    static func reasonGroup(_ reason: String) -> String {
        guard let eq = reason.firstIndex(of: "=") else { return reason }
        let rest = reason[eq...].firstIndex(of: ":").map { reason[$0...] } ?? ""
        return String(reason[..<eq]) + rest
    }
}
