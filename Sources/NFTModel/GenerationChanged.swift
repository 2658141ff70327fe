/// A batch sent with a compare-and-swap on the ruleset generation found another commit ahead
/// of it: the kernel refused it whole (ERESTART) and changed nothing. `committed` counts the
/// earlier batches of the same apply that the kernel did take.
public struct GenerationChanged: Error, CustomStringConvertible, Sendable, Equatable {
    public var expected: UInt32
    public var committed: Int
    public init(expected: UInt32, committed: Int = 0) {
        self.expected = expected
        self.committed = committed
    }
    public var description: String {
        "the ruleset changed after generation \(expected), which this change was planned from; the kernel refused it"
            + (committed > 0 ? " (\(committed) earlier batch\(committed == 1 ? " was" : "es were") committed)" : "")
    }
}
