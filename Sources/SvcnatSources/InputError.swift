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

    public var description: String {
        [file, object, field, message].compactMap { $0 }.joined(separator: ": ")
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
