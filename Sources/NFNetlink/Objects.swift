import CNftables
import NFTModel

/// Owners of libnftnl objects: each frees its object when it goes away.
final class NftTable {
    let raw: OpaquePointer
    init() { raw = nftnl_table_alloc() }
    deinit { nftnl_table_free(raw) }
}

final class NftChain {
    let raw: OpaquePointer
    init() { raw = nftnl_chain_alloc() }
    init(taking raw: OpaquePointer) { self.raw = raw }
    deinit { nftnl_chain_free(raw) }
}

final class NftRule {
    let raw: OpaquePointer
    init() { raw = nftnl_rule_alloc() }
    deinit { nftnl_rule_free(raw) }
}

final class NftSet {
    let raw: OpaquePointer
    init() { raw = nftnl_set_alloc() }
    deinit { nftnl_set_free(raw) }
}

final class NftObject {
    let raw: OpaquePointer
    init() { raw = nftnl_obj_alloc() }
    deinit { nftnl_obj_free(raw) }
}

final class NftFlowtable {
    let raw: OpaquePointer
    init() { raw = nftnl_flowtable_alloc() }
    deinit { nftnl_flowtable_free(raw) }
}

/// Kernel numbers for the model's symbolic values, taken from the UAPI headers.
enum KernelNumbers {
    static func family(_ f: TableFamily) -> UInt16 {
        switch f {
        case .ip: UInt16(NFPROTO_IPV4)
        case .ip6: UInt16(NFPROTO_IPV6)
        case .inet: UInt16(NFPROTO_INET)
        }
    }
    static func msg(_ t: nf_tables_msg_types) -> UInt16 { UInt16(NFNL_SUBSYS_NFTABLES << 8) | UInt16(t.rawValue) }

    static func reg(_ r: Register) -> UInt32 {
        switch r {
        case .verdict: NFT_REG_VERDICT.rawValue
        case .reg(let n): NFT_REG_1.rawValue + UInt32(n - 1)
        case .reg32(let n): NFT_REG32_00.rawValue + UInt32(n)
        }
    }

    static func register(_ v: UInt32) -> Register? {
        if v == NFT_REG_VERDICT.rawValue { return .verdict }
        if v >= NFT_REG_1.rawValue && v <= NFT_REG_4.rawValue { return .reg(Int(v - NFT_REG_1.rawValue) + 1) }
        if v >= NFT_REG32_00.rawValue && v <= NFT_REG32_15.rawValue { return .reg32(Int(v - NFT_REG32_00.rawValue)) }
        return nil
    }

    static func hook(_ h: Hook) -> UInt32 {
        switch h {
        case .prerouting: NF_INET_PRE_ROUTING.rawValue
        case .input: NF_INET_LOCAL_IN.rawValue
        case .forward: NF_INET_FORWARD.rawValue
        case .output: NF_INET_LOCAL_OUT.rawValue
        case .postrouting: NF_INET_POST_ROUTING.rawValue
        }
    }

    static func hook(_ v: UInt32) -> Hook? {
        [Hook.prerouting, .input, .forward, .output, .postrouting].first { hook($0) == v }
    }

    static func verdictCode(_ v: Verdict) -> Int32 {
        switch v {
        case .accept: Int32(NF_ACCEPT)
        case .drop: Int32(NF_DROP)
        case .return: NFT_RETURN.rawValue
        case .jump: NFT_JUMP.rawValue
        case .goto: NFT_GOTO.rawValue
        }
    }

    static func verdict(_ code: Int32, chain: String?) -> Verdict? {
        switch code {
        case Int32(NF_ACCEPT): .accept
        case Int32(NF_DROP): .drop
        case NFT_RETURN.rawValue: .return
        case NFT_JUMP.rawValue: chain.map { .jump($0) }
        case NFT_GOTO.rawValue: chain.map { .goto($0) }
        default: nil
        }
    }

    static func meta(_ k: MetaKey) -> UInt32 {
        switch k {
        case .l4proto: NFT_META_L4PROTO.rawValue
        case .mark: NFT_META_MARK.rawValue
        }
    }

    static func ct(_ k: CtKey) -> UInt32 {
        switch k {
        case .state: NFT_CT_STATE.rawValue
        case .status: NFT_CT_STATUS.rawValue
        }
    }

    static func payloadBase(_ b: PayloadBase) -> UInt32 {
        switch b {
        case .network: NFT_PAYLOAD_NETWORK_HEADER.rawValue
        case .transport: NFT_PAYLOAD_TRANSPORT_HEADER.rawValue
        }
    }

    static func reject(_ k: RejectKind) -> (type: UInt32, code: UInt8) {
        switch k {
        case .tcpReset: (NFT_REJECT_TCP_RST.rawValue, 0)
        case .icmpPortUnreachable: (NFT_REJECT_ICMP_UNREACH.rawValue, 3)  // ICMP_PORT_UNREACH
        case .icmpv6PortUnreachable: (NFT_REJECT_ICMP_UNREACH.rawValue, 4)  // ICMPV6_PORT_UNREACH
        }
    }

    static func attr<T: BinaryInteger>(_ a: T) -> UInt16 { UInt16(a) }
}

// The model keeps NAT flags and conntrack bits as plain numbers; hold them to the headers.
private let _natFlagsMatchHeaders: Void = {
    precondition(NATFlags.mapIPs == UInt32(NF_NAT_RANGE_MAP_IPS))
    precondition(NATFlags.protoSpecified == UInt32(NF_NAT_RANGE_PROTO_SPECIFIED))
    precondition(NATFlags.fullyRandom == UInt32(NF_NAT_RANGE_PROTO_RANDOM_FULLY))
}()

func checkModelConstants() { _ = _natFlagsMatchHeaders }
