/// An IPv4 address as a 32-bit integer in host order. Parsing is strict: four decimal octets,
/// no leading zeros (as Kubernetes validation rejects them), nothing else.
public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init?(_ text: some StringProtocol) {
        var octets: [UInt32] = []
        for part in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(part.count > 1 && part.first == "0"), let n = UInt32(part), n <= 255 else { return nil }
            octets.append(n)
        }
        guard octets.count == 4 else { return nil }
        value = octets.reduce(0) { $0 << 8 | $1 }
    }

    /// Network byte order, as the kernel stores it.
    public var bytes: [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 else { return nil }
        value = bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    public static func < (a: Self, b: Self) -> Bool { a.value < b.value }

    public var isLoopback: Bool { value >> 24 == 127 }
    public var isUnspecified: Bool { value == 0 }
}

/// An IPv4 prefix such as 198.19.0.0/16.
public struct IPv4Prefix: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var length: Int

    public init(address: IPv4Address, length: Int) {
        precondition((0...32).contains(length))
        self.length = length
        self.address = IPv4Address(address.value & IPv4Prefix.mask(length))
    }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPv4Address(parts[0]),
              parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let length = Int(parts[1]),
              (0...32).contains(length) else { return nil }
        self.init(address: address, length: length)
    }

    static func mask(_ length: Int) -> UInt32 { length == 0 ? 0 : ~UInt32(0) << (32 - length) }
    public var mask: UInt32 { Self.mask(length) }

    public func contains(_ ip: IPv4Address) -> Bool { ip.value & mask == address.value }

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
