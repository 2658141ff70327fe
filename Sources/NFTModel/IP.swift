/// The two address families svcnat programs, each in a table of its own (`ip svcnat` and
/// `ip6 svcnat`), as kube-proxy runs one proxier per family.
public enum IPFamily: String, Hashable, Sendable, CaseIterable, Comparable {
    case v4 = "IPv4", v6 = "IPv6"

    /// The nftables table family.
    public var tableFamily: TableFamily { self == .v4 ? .ip : .ip6 }
    /// The nft keyword for the network header: `ip saddr`, `ip6 saddr`.
    public var nftName: String { self == .v4 ? "ip" : "ip6" }
    public var addressLength: Int { self == .v4 ? 4 : 16 }
    public var bits: Int { addressLength * 8 }
    /// Where the addresses sit in the network header.
    public var saddrOffset: UInt32 { self == .v4 ? 12 : 8 }
    public var daddrOffset: UInt32 { self == .v4 ? 16 : 24 }
    public var keyField: KeyField { self == .v4 ? .ipv4Addr : .ipv6Addr }
    public var loopback: IPPrefix { self == .v4 ? IPPrefix("127.0.0.0/8")! : IPPrefix("::1/128")! }

    public init?(_ table: TableFamily) {
        switch table {
        case .ip: self = .v4
        case .ip6: self = .v6
        case .inet: return nil
        }
    }

    public static func < (a: Self, b: Self) -> Bool { a == .v4 && b == .v6 }
}

/// An IPv4 or IPv6 address. Eight bytes whatever the family: IPv4's 32 bits inline, IPv6's 128
/// in a box (IPv4 addresses fill svcnat's big tables; a 17-byte inline form cost some 25 MB and
/// 15% of a full sync at 10,000 Services).
/// Parsing is strict. IPv4 takes four decimal octets with no leading zeros, as Kubernetes
/// validation requires. IPv6 takes hex groups with at most one `::` and an optional dotted IPv4
/// tail, and no zone. Printing gives the canonical form (RFC 5952, as `nft` prints addresses).
public struct IPAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    private enum Storage: Hashable, Sendable {
        case v4(UInt32)
        indirect case v6(UInt64, UInt64)
    }
    private let storage: Storage

    /// An IPv4 address from its 32 bits, host order.
    public init(_ value: UInt32) { storage = .v4(value) }

    /// An IPv6 address from its two 64-bit halves, host order.
    public init(v6 high: UInt64, _ low: UInt64) { storage = .v6(high, low) }

    public var family: IPFamily { if case .v4 = storage { .v4 } else { .v6 } }
    /// The upper 64 bits (0 for IPv4).
    public var high: UInt64 { if case .v6(let h, _) = storage { h } else { 0 } }
    /// The lower 64 bits (an IPv4 address's 32).
    public var low: UInt64 {
        switch storage {
        case .v4(let v): UInt64(v)
        case .v6(_, let l): l
        }
    }

    /// A String's own overload: the generic one is not specialized across modules, and
    /// decoding parses an address per endpoint.
    public init?(_ text: String) {
        if text.utf8.contains(UInt8(ascii: ":")) {
            guard let (h, l) = Self.parse6(Array(text.utf8)) else { return nil }
            self.init(v6: h, l)
        } else {
            guard let v = Self.parse4(text.utf8) else { return nil }
            self.init(v)
        }
    }

    /// Any other text (a Substring) goes through the String one.
    public init?(_ text: some StringProtocol) { self.init(String(text)) }

    private static func parse4(_ text: some Collection<UInt8>) -> UInt32? {
        var value: UInt32 = 0, octet: UInt32 = 0, digits = 0, dots = 0, leadingZero = false
        for b in text {
            if b == UInt8(ascii: ".") {
                guard digits > 0, dots < 3 else { return nil }
                value = value << 8 | octet
                octet = 0; digits = 0; dots += 1
            } else if b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") {
                if digits == 0 { leadingZero = b == UInt8(ascii: "0") } else if leadingZero { return nil }
                octet = octet * 10 + UInt32(b - UInt8(ascii: "0"))
                digits += 1
                guard octet <= 255 else { return nil }
            } else {
                return nil
            }
        }
        guard digits > 0, dots == 3 else { return nil }
        return value << 8 | octet
    }

    private static func parse6(_ t: [UInt8]) -> (UInt64, UInt64)? {
        guard t.count >= 2, t.count <= 45 else { return nil }
        var groups: [UInt16] = [], gap: Int? = nil
        var i = 0
        if t.starts(with: [UInt8(ascii: ":"), UInt8(ascii: ":")]) { gap = 0; i = 2 } else if t[0] == UInt8(ascii: ":") { return nil }
        while i < t.count {
            // One group (or a dotted IPv4 tail), then ":" or "::" or the end.
            var j = i
            while j < t.count, t[j] != UInt8(ascii: ":") { j += 1 }
            let part = t[i..<j]
            if part.contains(UInt8(ascii: ".")) {
                guard j == t.count, groups.count <= 6, let v4 = parse4(part) else { return nil }
                groups += [UInt16(v4 >> 16), UInt16(v4 & 0xffff)]
                i = j
                break
            }
            guard (1...4).contains(part.count) else { return nil }
            var g: UInt16 = 0
            for b in part {
                guard let d = hexDigit(b) else { return nil }
                g = g << 4 | UInt16(d)
            }
            groups.append(g)
            i = j
            if i == t.count { break }
            i += 1  // the ":"
            if i < t.count, t[i] == UInt8(ascii: ":") {
                guard gap == nil else { return nil }
                gap = groups.count
                i += 1
            } else if i == t.count {
                return nil  // a trailing single ":"
            }
        }
        if let gap {
            guard groups.count <= 7 else { return nil }
            groups.insert(contentsOf: [UInt16](repeating: 0, count: 8 - groups.count), at: gap)
        }
        guard groups.count == 8 else { return nil }
        let h = groups[0..<4].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let l = groups[4..<8].reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        return (h, l)
    }

    private static func hexDigit(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): b - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Network byte order, as the kernel stores it: 4 or 16 bytes.
    public var bytes: [UInt8] {
        if family == .v4 { return (0..<4).map { UInt8(truncatingIfNeeded: low >> (24 - 8 * $0)) } }
        return (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
    }

    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4: self.init(bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        case 16:
            self.init(v6: bytes[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }, bytes[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        default: return nil
        }
    }

    /// The 32 bits of an IPv4 address.
    public var v4Value: UInt32 { UInt32(truncatingIfNeeded: low) }

    public var description: String {
        if family == .v4 {
            let v = v4Value
            return "\(v >> 24).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
        }
        let g =
            (0..<4).map { UInt16(truncatingIfNeeded: high >> (48 - 16 * $0)) }
            + (0..<4).map { UInt16(truncatingIfNeeded: low >> (48 - 16 * $0)) }
        // The longest run of two or more zero groups (the first of equals) becomes "::".
        var best = (start: -1, count: 0), run = (start: -1, count: 0)
        for (i, x) in g.enumerated() {
            if x == 0 {
                run = run.start < 0 ? (i, 1) : (run.start, run.count + 1)
                if run.count > best.count { best = run }
            } else {
                run = (-1, 0)
            }
        }
        let hexes = g.map { String($0, radix: 16) }
        guard best.count >= 2 else { return hexes.joined(separator: ":") }
        let head = hexes[..<best.start].joined(separator: ":"), tail = hexes[(best.start + best.count)...].joined(separator: ":")
        return head + "::" + tail
    }

    /// IPv4 before IPv6, each in numeric order.
    public static func < (a: Self, b: Self) -> Bool {
        switch (a.storage, b.storage) {
        case (.v4(let x), .v4(let y)): x < y
        case (.v6(let h1, let l1), .v6(let h2, let l2)): (h1, l1) < (h2, l2)
        case (.v4, .v6): true
        case (.v6, .v4): false
        }
    }

    /// `198.19.1.2:80`, or `[2001:db8::2]:80`.
    public func withPort(_ port: UInt16) -> String { family == .v4 ? "\(self):\(port)" : "[\(self)]:\(port)" }

    public var isLoopback: Bool { family == .v4 ? v4Value >> 24 == 127 : (high == 0 && low == 1) }
    public var isUnspecified: Bool { high == 0 && low == 0 }
    /// IPv4 224.0.0.0/3 (multicast and reserved), IPv6 ff00::/8 (multicast).
    public var isMulticastOrReserved: Bool { family == .v4 ? v4Value >> 28 >= 14 : high >> 56 == 0xff }

    /// The address with only its first `length` bits kept.
    func masked(_ length: Int) -> IPAddress {
        switch storage {
        case .v4(let v):
            return IPAddress(v & (length == 0 ? 0 : ~UInt32(0) << (32 - length)))
        case .v6(let h, let l):
            return IPAddress(
                v6: h & (length == 0 ? 0 : length >= 64 ? ~0 : ~UInt64(0) << (64 - length)),
                l & (length <= 64 ? 0 : length == 128 ? ~0 : ~UInt64(0) << (128 - length)))
        }
    }
}

/// An IPv4 or IPv6 prefix such as 198.19.0.0/16 or 2001:db8:1::/48.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var length: Int

    public init(address: IPAddress, length: Int) {
        precondition((0...address.family.bits).contains(length))
        self.length = length
        self.address = address.masked(length)
    }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPAddress(parts[0]), (1...3).contains(parts[1].count),
            parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let length = Int(parts[1]),
            (0...address.family.bits).contains(length)
        else { return nil }
        self.init(address: address, length: length)
    }

    public var family: IPFamily { address.family }

    /// The mask as an address of the same family (for the bytes nft compares).
    public var mask: IPAddress {
        family == .v4 ? IPAddress(~0).masked(length) : IPAddress(v6: ~0, ~0).masked(length)
    }

    public func contains(_ ip: IPAddress) -> Bool { ip.family == family && ip.masked(length) == address }

    public var description: String { "\(address)/\(length)" }
}

/// Transport protocols a Service port may use, with their IANA numbers.
public enum TransportProtocol: String, Hashable, Sendable, CaseIterable, Comparable, Codable {
    case tcp = "TCP", udp = "UDP", sctp = "SCTP"

    public var number: UInt8 {
        switch self {
        case .tcp: 6
        case .udp: 17
        case .sctp: 132
        }
    }

    public init?(number: UInt8) {
        guard let p = Self.allCases.first(where: { $0.number == number }) else { return nil }
        self = p
    }

    /// The name nft and kube-proxy's chain hashes use.
    public var lowercased: String { rawValue.lowercased() }

    public static func < (a: Self, b: Self) -> Bool { a.number < b.number }
}

public struct EndpointAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var ip: IPAddress
    public var port: UInt16
    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }
    public var description: String { ip.withPort(port) }
    public static func < (a: Self, b: Self) -> Bool { (a.ip, a.port) < (b.ip, b.port) }
}
