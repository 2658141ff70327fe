import CHost
import Glibc

/// A failed system call outside netlink (inotify, getifaddrs): what was tried, and the errno.
public struct HostError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String { "\(operation): \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// Returns freed heap pages to the kernel (glibc's `malloc_trim`), after a large sync.
public func releaseFreeMemory() { _ = malloc_trim(0) }

/// One malloc arena for the whole process (glibc's `M_ARENA_MAX`), set before other threads
/// start. By default each thread that allocates may get an arena of its own, and memory freed
/// in one (an API page decoded on a network thread) is not reused by another (the sync's
/// queue), which then faults in fresh pages. For `svcnat run` at 10,000 Services from the API,
/// one arena measured 129 MB RSS after the first sync against 139 to 142 MB.
public func useOneMallocArena() { _ = mallopt(M_ARENA_MAX, 1) }

/// `net.netfilter.nf_conntrack_tcp_be_liberal` of this network namespace: with it set,
/// conntrack marks only out-of-window RSTs INVALID, so kube-proxy's INVALID-drop is not needed
/// (kube-proxy's `--conntrack-tcp-be-liberal` sets it; its iptables mode installs the drop
/// only while it is unset).
public enum TCPBeLiberal {
    public static let path = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"

    /// Whether it is set; false when conntrack is not loaded (the file is absent).
    public static func isSet() -> Bool {
        guard let f = fopen(path, "r") else { return false }
        defer { fclose(f) }
        return fgetc(f) == Int32(UInt8(ascii: "1"))
    }

    /// Sets it to 1.
    public static func set() throws {
        guard let f = fopen(path, "w") else { throw HostError("open \(path)", errno: errno) }
        defer { fclose(f) }
        guard fputs("1\n", f) >= 0, fflush(f) == 0 else { throw HostError("write 1 to \(path)", errno: errno) }
    }
}
