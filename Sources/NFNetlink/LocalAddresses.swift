import Glibc
import SvcnatModel

/// The IPv4 addresses of this network namespace's interfaces (what `fib daddr type local`
/// answers for), read with getifaddrs.
public func localIPv4Addresses() throws -> Set<IPv4Address> {
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0 else { throw NetlinkError("read the interfaces' addresses", errno: errno) }
    defer { freeifaddrs(list) }
    var out = Set<IPv4Address>()
    var p = list
    while let entry = p {
        if let sa = entry.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET) {
            let v = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
            out.insert(IPv4Address(UInt32(bigEndian: v)))
        }
        p = entry.pointee.ifa_next
    }
    return out
}
