/// A UDP conntrack entry to delete, named by what the kernel shows of it: the original
/// destination and port, and where replies come from (the endpoint it was DNATed to, or the
/// original destination when it was not NATed).
public struct FlowFilter: Hashable, Sendable, CustomStringConvertible {
    /// The frontend's address; nil for a node port (any local address).
    public var destination: IPAddress?
    public var port: UInt16
    /// The endpoint the flow was DNATed to; nil for "not DNATed" (reply source is the original
    /// destination).
    public var endpoint: EndpointAddress?

    public init(destination: IPAddress?, port: UInt16, endpoint: EndpointAddress?) {
        self.destination = destination
        self.port = port
        self.endpoint = endpoint
    }

    public var description: String {
        "udp to \(destination.map(String.init(describing:)) ?? "node port") \(port)" + (endpoint.map { " via \($0)" } ?? " not NATed")
    }

    /// Whether a UDP flow (original destination and reply source) matches.
    public func matches(originalDestination: IPAddress, originalPort: UInt16, replySource: IPAddress, replyPort: UInt16) -> Bool {
        guard originalPort == port, destination.map({ $0 == originalDestination }) ?? true else { return false }
        if let endpoint { return replySource == endpoint.ip && replyPort == endpoint.port }
        return replySource == originalDestination && replyPort == originalPort
    }
}
