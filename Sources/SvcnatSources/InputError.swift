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
