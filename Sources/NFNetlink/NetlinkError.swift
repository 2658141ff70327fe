import CNftables
import Glibc

/// A failure talking to the kernel: the operation it was about (for a batch, the message the
/// kernel refused, matched by sequence number) and the errno.
public struct NetlinkError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var errnoName: String { String(cString: strerror(errno)) }

    public var description: String {
        var s = "\(operation): \(errnoName) (errno \(errno))"
        if errno == EPERM { s += "; svcnat needs CAP_NET_ADMIN (run it as root, or give it that capability alone)" }
        // Kernel features some kernels lack, and what svcnat can do without them.
        if errno == EOPNOTSUPP || errno == ENOENT {
            if operation.contains("fib ") {
                s += "; this kernel may lack the nftables fib expression (nft_fib_ipv4): give --nodeport-addresses CIDRs so node ports need no fib (externalTrafficPolicy Local still needs it)"
            } else if operation.contains("numgen") {
                s += "; this kernel may lack the nftables numgen expression (nft_numgen)"
            } else if operation.contains("dynamic,timeout") || operation.contains("update @") {
                s += "; this kernel may lack dynamic sets with timeouts (session affinity needs them)"
            }
        }
        return s
    }

    /// Runs a libc/libmnl call that returns -1 with errno on failure.
    @discardableResult
    static func check(_ operation: @autoclosure () -> String, _ result: Int) throws -> Int {
        if result < 0 { throw NetlinkError(operation(), errno: Glibc.errno) }
        return result
    }
}

/// Several refused messages of one batch; the first is the one to report.
public struct BatchError: Error, CustomStringConvertible, Sendable {
    public var failures: [NetlinkError]
    public var description: String {
        "the kernel refused the transaction (nothing was changed): "
            + failures.map(\.description).joined(separator: "; ")
    }
}
