/// svcnat's table as plain values: what the translator wants and what the kernel holds are both
/// described by a `Ruleset`, so comparing them is comparing values.
public enum TableFamily: String, Hashable, Sendable, Codable { case ip, ip6, inet }

public enum ChainType: String, Hashable, Sendable, Codable { case filter, nat }
public enum Hook: String, Hashable, Sendable, Codable { case prerouting, input, forward, output, postrouting }

public struct BaseChain: Hashable, Sendable {
    public var type: ChainType
    public var hook: Hook
    public var priority: Int32
    /// What happens to a packet that reaches the chain's end.
    public var policy: ChainPolicy
    public init(type: ChainType, hook: Hook, priority: Int32, policy: ChainPolicy = .accept) {
        self.type = type
        self.hook = hook
        self.priority = priority
        self.policy = policy
    }

    /// Whether only the policy differs, which the kernel changes in place; a different type,
    /// hook or priority needs the chain made again.
    public func differsOnlyInPolicy(from other: BaseChain) -> Bool {
        type == other.type && hook == other.hook && priority == other.priority && policy != other.policy
    }
}

public enum ChainPolicy: String, Hashable, Sendable { case accept, drop }

public struct Chain: Hashable, Sendable {
    public var name: String
    public var base: BaseChain?
    public var rules: [Rule]

    public init(name: String, base: BaseChain? = nil, rules: [Rule] = []) {
        self.name = name
        self.base = base
        self.rules = rules
    }
}

/// One field of a set key. Every field takes a 4-byte-aligned slot in the key, as the kernel's
/// concatenations do.
public enum KeyField: String, Hashable, Sendable, Codable {
    case ipv4Addr = "ipv4_addr", ipv6Addr = "ipv6_addr", inetProto = "inet_proto", inetService = "inet_service"
    /// A 32-bit number in host order, such as a `numgen` result.
    case integer = "integer"

    /// nft's datatype numbers (TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE); nft reads
    /// the set's key type from them to print elements.
    public var nftTypeID: UInt32 {
        switch self {
        case .integer: 4
        case .ipv4Addr: 7
        case .ipv6Addr: 8
        case .inetProto: 12
        case .inetService: 13
        }
    }

    public var length: Int {
        switch self {
        case .ipv4Addr, .integer: 4
        case .ipv6Addr: 16
        case .inetProto: 1
        case .inetService: 2
        }
    }
}

public enum KeyValue: Hashable, Sendable, Comparable, CustomStringConvertible {
    case ip(IPAddress)
    case proto(TransportProtocol)
    case port(UInt16)
    case integer(UInt32)

    public var description: String {
        switch self {
        case .ip(let a): a.description
        case .proto(let p): p.lowercased
        case .port(let p): String(p)
        case .integer(let n): String(n)
        }
    }

    var bytes: [UInt8] {
        switch self {
        case .ip(let a): a.bytes
        case .proto(let p): [p.number]
        case .port(let p): p.networkBytes
        case .integer(let n): n.hostBytes
        }
    }

    public static func < (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.ip(let x), .ip(let y)): x < y
        case (.proto(let x), .proto(let y)): x < y
        case (.port(let x), .port(let y)): x < y
        case (.integer(let x), .integer(let y)): x < y
        default: a.description < b.description
        }
    }
}

public struct SetElement: Hashable, Sendable {
    public var key: ElementKey
    /// The value of a data map's element.
    public var data: ElementKey?
    /// The verdict and comment, which most elements (endpoint slots, hairpin pairs) lack: one
    /// reference rather than two optionals inline keeps an element at 40 bytes, not 72.
    private var tail: Tail?

    private final class Tail: Hashable, Sendable {
        let verdict: Verdict?
        let comment: String?
        private init(_ verdict: Verdict?, _ comment: String?) {
            self.verdict = verdict
            self.comment = comment
        }
        static func make(_ verdict: Verdict?, _ comment: String?) -> Tail? {
            verdict == nil && comment == nil ? nil : Tail(verdict, comment)
        }
        static func == (a: Tail, b: Tail) -> Bool { a === b || (a.verdict == b.verdict && a.comment == b.comment) }
        func hash(into h: inout Hasher) {
            h.combine(verdict)
            h.combine(comment)
        }
    }

    public var verdict: Verdict? {
        get { tail?.verdict }
        set { tail = Tail.make(newValue, comment) }
    }
    public var comment: String? {
        get { tail?.comment }
        set { tail = Tail.make(verdict, newValue) }
    }

    public init(key: ElementKey, verdict: Verdict? = nil, data: ElementKey? = nil, comment: String? = nil) {
        self.key = key
        self.data = data
        self.tail = Tail.make(verdict, comment)
    }

    /// The key as the kernel stores it: each field in network order, padded to 4 bytes.
    public var keyBytes: [UInt8] { key.bytes }
    public var dataBytes: [UInt8]? { data?.bytes }

    public static func decodeKey(_ bytes: [UInt8], fields: [KeyField]) -> ElementKey? {
        var out: [KeyValue] = []
        out.reserveCapacity(fields.count)
        var at = 0
        for f in fields {
            guard at + f.length <= bytes.count else { return nil }
            let b = Array(bytes[at..<at + f.length])
            switch f {
            case .ipv4Addr, .ipv6Addr: out.append(.ip(IPAddress(bytes: b)!))
            case .inetProto:
                guard let p = TransportProtocol(number: b[0]) else { return nil }
                out.append(.proto(p))
            case .inetService: out.append(.port(UInt16(b[0]) << 8 | UInt16(b[1])))
            case .integer: out.append(.integer(UInt32(hostBytes: b)!))
            }
            at += (f.length + 3) / 4 * 4
        }
        return at == bytes.count ? ElementKey(out) : nil
    }

    public var keyText: String { key.description }

    /// The key packed into one number that orders like the key itself (fields big-endian, in
    /// order), when it fits in 64 bits, as every IPv4 key svcnat makes does.
    public var packedKey: UInt64? { key.packed }

    /// Sorts elements by key (equal keys in their given order), cheaply: when every key is
    /// packed in one shape (all IPv4 sets), the numbers are sorted with their positions and the
    /// elements gathered once, which costs a fifth of moving the elements themselves through
    /// the sort (the hairpin set of 50,000 Services x 5 has 250,000).
    public static func sorted(_ elements: [SetElement]) -> [SetElement] {
        let shape = elements.first?.key.packedWithShape?.shape
        var order: [(key: UInt64, at: Int)] = []
        order.reserveCapacity(elements.count)
        for (i, e) in elements.enumerated() {
            guard let k = e.key.packedWithShape, k.shape == shape else { return elements.sorted { $0.key.precedes($1.key) } }
            order.append((k.value, i))
        }
        order.sort { $0.key != $1.key ? $0.key < $1.key : $0.at < $1.at }
        return order.map { elements[$0.at] }
    }
}

/// What a set's elements map to.
public enum SetData: Hashable, Sendable {
    case none
    case verdict
    case values([KeyField])
}

public struct NamedSet: Hashable, Sendable {
    public var name: String
    public var key: [KeyField]
    public var data: SetData
    /// nft's `typeof` description, for sets whose key nft cannot name by type alone (the
    /// endpoint maps, keyed by a numgen result). Printed instead of `type`.
    public var typeof: String?
    /// For a set the packet path fills (`update @set { ip saddr }`): its elements' lifetime in
    /// seconds. Such a set's elements are traffic's, not svcnat's: never compared or replaced.
    public var timeout: UInt32?
    public var elements: [SetElement]

    public init(name: String, key: [KeyField], data: SetData, typeof: String? = nil, timeout: UInt32? = nil, elements: [SetElement] = []) {
        self.name = name
        self.key = key
        self.data = data
        self.typeof = typeof
        self.timeout = timeout
        self.elements = elements
    }

    public var isDynamic: Bool { timeout != nil }

    public var isVerdictMap: Bool { data == .verdict }
    public var isMap: Bool { data != .none }

    public static func fieldsLength(_ f: [KeyField]) -> Int { f.reduce(0) { $0 + ($1.length + 3) / 4 * 4 } }
    public var keyLength: Int { Self.fieldsLength(key) }
    public var dataLength: Int { if case .values(let f) = data { Self.fieldsLength(f) } else { 0 } }

    /// nft's concatenated type id: 6 bits per field, first field highest.
    public static func nftType(_ f: [KeyField]) -> UInt32 { f.reduce(0) { $0 << 6 | $1.nftTypeID } }
    public var nftKeyType: UInt32 { Self.nftType(key) }

    public var typeText: String {
        if let typeof { return "typeof \(typeof)" }
        let k = key.map(\.rawValue).joined(separator: " . ")
        switch data {
        case .none: return "type \(k)"
        case .verdict: return "type \(k) : verdict"
        case .values(let f): return "type \(k) : " + f.map(\.rawValue).joined(separator: " . ")
        }
    }

    /// Same definition (name, key, data, timeout), whatever the elements.
    public func sameDefinition(as other: NamedSet) -> Bool {
        name == other.name && key == other.key && data == other.data && timeout == other.timeout
    }

}

public struct Ruleset: Hashable, Sendable {
    public var family: TableFamily
    public var table: String
    /// The table's comment (its userdata, as nft writes it): who owns it.
    public var comment: String?
    /// The table's flags (NFT_TABLE_F_DORMANT unhooks every chain). Wanted: none.
    public var flags: UInt32 = 0
    public var sets: [NamedSet]
    public var chains: [Chain]

    public init(family: TableFamily = .ip, table: String, comment: String? = nil, sets: [NamedSet] = [], chains: [Chain] = []) {
        self.family = family
        self.table = table
        self.comment = comment
        self.sets = sets
        self.chains = chains
    }

    /// NFT_TABLE_F_DORMANT.
    public static let dormant: UInt32 = 1

    /// Objects of kinds svcnat never makes (stateful objects, flowtables) found in the table:
    /// someone else's, so drift repair deletes them.
    public var foreign: [ForeignObject] = []

    public func chain(_ name: String) -> Chain? { chains.first { $0.name == name } }
    public func set(_ name: String) -> NamedSet? { sets.first { $0.name == name } }

    public var ruleCount: Int { chains.reduce(0) { $0 + $1.rules.count } }
    public var elementCount: Int { sets.reduce(0) { $0 + $1.elements.count } }
}

/// A table object svcnat does not make: a stateful object (counter, quota, limit, ct helper,
/// ...) of kernel type `type`, or a flowtable.
public struct ForeignObject: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        case object(type: UInt32)
        case flowtable
    }
    public var kind: Kind
    public var name: String
    public init(kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }

    /// nft's word for it: `delete counter ip t NAME`, `delete flowtable ip t NAME`.
    public var nftKeyword: String {
        switch kind {
        case .flowtable: "flowtable"
        case .object(let t):
            switch t {
            case 1: "counter"
            case 2: "quota"
            case 3: "ct helper"
            case 4: "limit"
            case 5: "connlimit"
            case 6: "tunnel"
            case 7: "ct timeout"
            case 8: "secmark"
            case 9: "ct expectation"
            case 10: "synproxy"
            default: "object type \(t)"
            }
        }
    }
}
