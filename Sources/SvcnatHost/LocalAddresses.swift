import Glibc
import NFTModel

/// The IPv4 and IPv6 addresses of this network namespace's interfaces (what `fib daddr type local`
/// answers for), read with getifaddrs.
public func localIPAddresses() throws -> Set<IPAddress> {
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0 else { throw HostError("read the interfaces' addresses", errno: errno) }
    defer { freeifaddrs(list) }
    var out = Set<IPAddress>()
    var p = list
    while let entry = p {
        if let sa = entry.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET) {
            let v = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
            out.insert(IPAddress(UInt32(bigEndian: v)))
        } else if let sa = entry.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET6) {
            let bytes = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) }
            }
            if let a = IPAddress(bytes: bytes) { out.insert(a) }
        }
        p = entry.pointee.ifa_next
    }
    return out
}
