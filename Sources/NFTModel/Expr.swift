/// The low-level expressions of an nftables rule, one case per kernel expression type svcnat
/// uses. This is what goes over netlink and what comes back from a dump; the netlink layer maps
/// each case to a libnftnl expression and back. Register and enum numbers are kept symbolic here
/// and translated to the kernel's constants by the netlink layer.
public enum Expr: Hashable, Sendable {
    case payload(base: PayloadBase, offset: UInt32, length: UInt32, dreg: Register)
    case meta(key: MetaKey, dreg: Register)
    case metaSet(key: MetaKey, sreg: Register)
    case ct(key: CtKey, dreg: Register)
    case cmp(sreg: Register, op: CmpOp, data: [UInt8])
    /// `dreg = (sreg & mask) ^ xor`, over `mask.count` bytes.
    case bitwise(sreg: Register, dreg: Register, mask: [UInt8], xor: [UInt8])
    /// A set lookup; with `dreg` a map lookup (`.verdict` for a verdict map).
    case lookup(set: String, sreg: Register, dreg: Register?)
    case immediate(dreg: Register, data: [UInt8])
    case verdict(Verdict)
    /// `numgen random mod modulus offset offset` into dreg.
    case numgen(dreg: Register, modulus: UInt32, offset: UInt32)
    /// Destination NAT to an address of `family` (and port, when protoReg is set).
    case dnat(family: IPFamily, addrReg: Register, protoReg: Register?, flags: UInt32)
    case masquerade(flags: UInt32)
    case reject(kind: RejectKind)
    /// `fib daddr type` into dreg (the route type of the destination address).
    case fibDaddrType(dreg: Register)
    /// `update @set { key from sreg }` (the set's own timeout).
    case dynsetUpdate(set: String, sreg: Register)
    /// `fib saddr type` into dreg.
    case fibSaddrType(dreg: Register)
    /// An expression svcnat does not produce (found in the kernel, put there by someone else).
    case unknown(String)
}

public enum PayloadBase: Hashable, Sendable { case network, transport }
public enum MetaKey: Hashable, Sendable { case l4proto, mark }
public enum CtKey: Hashable, Sendable { case state, status }
public enum CmpOp: Hashable, Sendable { case eq, neq }

/// nftables registers: the four 16-byte registers or the sixteen 4-byte ones nft uses for
/// concatenations; `.verdict` is the verdict register.
public enum Register: Hashable, Sendable {
    case verdict
    case reg(Int)  // 1...4
    case reg32(Int)  // 0...15
}

public enum RejectKind: Hashable, Sendable {
    case tcpReset
    case icmpPortUnreachable
    case icmpv6PortUnreachable
}

public enum Verdict: Hashable, Sendable, CustomStringConvertible {
    case accept, drop, `return`
    case jump(String)
    case goto(String)

    public var description: String {
        switch self {
        case .accept: "accept"
        case .drop: "drop"
        case .return: "return"
        case .jump(let c): "jump \(c)"
        case .goto(let c): "goto \(c)"
        }
    }

    public var target: String? {
        switch self {
        case .jump(let c), .goto(let c): c
        default: nil
        }
    }
}

/// NAT flags as the kernel's nf_nat.h defines them (NF_NAT_RANGE_*). Kept here because the model
/// must compare what it plans with what the kernel reports; the netlink layer checks these
/// against the kernel header at compile time.
public enum NATFlags {
    public static let mapIPs: UInt32 = 1 << 0
    public static let protoSpecified: UInt32 = 1 << 1
    public static let fullyRandom: UInt32 = 1 << 4
}

/// Connection tracking bits svcnat matches (IP_CT_* / IPS_* from the kernel UAPI).
public enum CtBits {
    public static let stateNew: UInt32 = 1 << 3  // NF_CT_STATE_BIT(IP_CT_NEW)
    public static let statusDNAT: UInt32 = 1 << 5  // IPS_DST_NAT
}

/// Route types (RTN_* in linux/rtnetlink.h) that `fib ... type` yields.
public enum RouteType {
    public static let local: UInt32 = 2  // RTN_LOCAL
}

extension UInt32 {
    /// Host-order bytes, as the kernel holds 32-bit register values such as marks and numgen.
    var hostBytes: [UInt8] { withUnsafeBytes(of: self.littleEndian) { Array($0) } }
    init?(hostBytes b: [UInt8]) {
        guard b.count == 4 else { return nil }
        self = UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }
}

extension UInt16 {
    var networkBytes: [UInt8] { [UInt8(self >> 8), UInt8(self & 0xff)] }
}
