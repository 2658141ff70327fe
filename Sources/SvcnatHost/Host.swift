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
