import CNftables
import NFTModel

/// One model expression to one libnftnl expression and back. The corresponding libnftnl calls
/// are `nftnl_expr_alloc`, `nftnl_expr_set*` and `nftnl_expr_get*`.
enum ExprCodec {
    /// A new expression; `nftnl_rule_add_expr` hands its ownership to the rule.
    static func make(_ e: Expr) -> OpaquePointer {
        func alloc(_ name: String) -> OpaquePointer { nftnl_expr_alloc(name)! }
        func u32(_ x: OpaquePointer, _ attr: Int, _ v: UInt32) { nftnl_expr_set_u32(x, UInt16(attr), v) }
        func reg(_ x: OpaquePointer, _ attr: Int, _ r: Register) { u32(x, attr, KernelNumbers.reg(r)) }
        func bytes(_ x: OpaquePointer, _ attr: Int, _ b: [UInt8]) {
            b.withUnsafeBytes { _ = nftnl_expr_set(x, UInt16(attr), $0.baseAddress, UInt32($0.count)) }
        }
        switch e {
        case .payload(let base, let offset, let length, let dreg):
            let x = alloc("payload")
            reg(x, NFTNL_EXPR_PAYLOAD_DREG, dreg)
            u32(x, NFTNL_EXPR_PAYLOAD_BASE, KernelNumbers.payloadBase(base))
            u32(x, NFTNL_EXPR_PAYLOAD_OFFSET, offset)
            u32(x, NFTNL_EXPR_PAYLOAD_LEN, length)
            return x
        case .meta(let key, let dreg):
            let x = alloc("meta")
            u32(x, NFTNL_EXPR_META_KEY, KernelNumbers.meta(key))
            reg(x, NFTNL_EXPR_META_DREG, dreg)
            return x
        case .metaSet(let key, let sreg):
            let x = alloc("meta")
            u32(x, NFTNL_EXPR_META_KEY, KernelNumbers.meta(key))
            reg(x, NFTNL_EXPR_META_SREG, sreg)
            return x
        case .ct(let key, let dreg):
            let x = alloc("ct")
            u32(x, NFTNL_EXPR_CT_KEY, KernelNumbers.ct(key))
            reg(x, NFTNL_EXPR_CT_DREG, dreg)
            return x
        case .cmp(let sreg, let op, let data):
            let x = alloc("cmp")
            reg(x, NFTNL_EXPR_CMP_SREG, sreg)
            u32(x, NFTNL_EXPR_CMP_OP, op == .eq ? NFT_CMP_EQ.rawValue : NFT_CMP_NEQ.rawValue)
            bytes(x, NFTNL_EXPR_CMP_DATA, data)
            return x
        case .bitwise(let sreg, let dreg, let mask, let xor):
            let x = alloc("bitwise")
            reg(x, NFTNL_EXPR_BITWISE_SREG, sreg)
            reg(x, NFTNL_EXPR_BITWISE_DREG, dreg)
            u32(x, NFTNL_EXPR_BITWISE_LEN, UInt32(mask.count))
            bytes(x, NFTNL_EXPR_BITWISE_MASK, mask)
            bytes(x, NFTNL_EXPR_BITWISE_XOR, xor)
            return x
        case .lookup(let set, let sreg, let dreg):
            let x = alloc("lookup")
            nftnl_expr_set_str(x, UInt16(NFTNL_EXPR_LOOKUP_SET), set)
            reg(x, NFTNL_EXPR_LOOKUP_SREG, sreg)
            if let dreg { reg(x, NFTNL_EXPR_LOOKUP_DREG, dreg) }
            return x
        case .immediate(let dreg, let data):
            let x = alloc("immediate")
            reg(x, NFTNL_EXPR_IMM_DREG, dreg)
            bytes(x, NFTNL_EXPR_IMM_DATA, data)
            return x
        case .verdict(let v):
            let x = alloc("immediate")
            reg(x, NFTNL_EXPR_IMM_DREG, .verdict)
            u32(x, NFTNL_EXPR_IMM_VERDICT, UInt32(bitPattern: KernelNumbers.verdictCode(v)))
            if let c = v.target { nftnl_expr_set_str(x, UInt16(NFTNL_EXPR_IMM_CHAIN), c) }
            return x
        case .numgen(let dreg, let modulus, let offset):
            let x = alloc("numgen")
            reg(x, NFTNL_EXPR_NG_DREG, dreg)
            u32(x, NFTNL_EXPR_NG_MODULUS, modulus)
            u32(x, NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM.rawValue)
            u32(x, NFTNL_EXPR_NG_OFFSET, offset)
            return x
        case .dnat(let family, let addrReg, let protoReg, let flags):
            let x = alloc("nat")
            u32(x, NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT.rawValue)
            u32(x, NFTNL_EXPR_NAT_FAMILY, family == .v4 ? UInt32(NFPROTO_IPV4) : UInt32(NFPROTO_IPV6))
            reg(x, NFTNL_EXPR_NAT_REG_ADDR_MIN, addrReg)
            if let protoReg { reg(x, NFTNL_EXPR_NAT_REG_PROTO_MIN, protoReg) }
            // As nft sends it: the flags the registers imply are left to the kernel, which sets them.
            var explicit = flags & ~NATFlags.mapIPs
            if protoReg != nil { explicit &= ~NATFlags.protoSpecified }
            if explicit != 0 { u32(x, NFTNL_EXPR_NAT_FLAGS, explicit) }
            return x
        case .masquerade(let flags):
            let x = alloc("masq")
            if flags != 0 { u32(x, NFTNL_EXPR_MASQ_FLAGS, flags) }
            return x
        case .reject(let kind):
            let x = alloc("reject")
            let (type, code) = KernelNumbers.reject(kind)
            u32(x, NFTNL_EXPR_REJECT_TYPE, type)
            nftnl_expr_set_u8(x, UInt16(NFTNL_EXPR_REJECT_CODE), code)
            return x
        case .fibDaddrType(let dreg), .fibSaddrType(let dreg):
            let x = alloc("fib")
            reg(x, NFTNL_EXPR_FIB_DREG, dreg)
            u32(x, NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE.rawValue)
            if case .fibDaddrType = e {
                u32(x, NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR.rawValue)
            } else {
                u32(x, NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_SADDR.rawValue)
            }
            return x
        case .dynsetUpdate(let set, let sreg):
            let x = alloc("dynset")
            reg(x, NFTNL_EXPR_DYNSET_SREG_KEY, sreg)
            u32(x, NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE.rawValue)
            nftnl_expr_set_str(x, UInt16(NFTNL_EXPR_DYNSET_SET_NAME), set)
            return x
        case .unknown(let what):
            preconditionFailure("cannot encode an unknown expression: \(what)")
        }
    }

    /// Reads one expression of a dumped rule. Attributes the kernel adds on its own (implied NAT
    /// flags, the bitwise operation) are normalised so the result equals what svcnat planned.
    static func read(_ x: OpaquePointer) -> Expr {
        let name = String(cString: nftnl_expr_get_str(x, UInt16(NFTNL_EXPR_NAME)))
        func has(_ a: Int) -> Bool { nftnl_expr_is_set(x, UInt16(a)) }
        func u32(_ a: Int) -> UInt32 { nftnl_expr_get_u32(x, UInt16(a)) }
        func reg(_ a: Int) -> Register? { has(a) ? KernelNumbers.register(u32(a)) : nil }
        func bytes(_ a: Int) -> [UInt8] {
            var len: UInt32 = 0
            guard has(a), let p = nftnl_expr_get(x, UInt16(a), &len) else { return [] }
            return Array(UnsafeRawBufferPointer(start: p, count: Int(len)))
        }
        func str(_ a: Int) -> String? { has(a) ? String(cString: nftnl_expr_get_str(x, UInt16(a))) : nil }
        let unknown = Expr.unknown(name)

        switch name {
        case "payload":
            guard let dreg = reg(NFTNL_EXPR_PAYLOAD_DREG) else { return unknown }
            let base: PayloadBase
            switch u32(NFTNL_EXPR_PAYLOAD_BASE) {
            case NFT_PAYLOAD_NETWORK_HEADER.rawValue: base = .network
            case NFT_PAYLOAD_TRANSPORT_HEADER.rawValue: base = .transport
            default: return unknown
            }
            return .payload(base: base, offset: u32(NFTNL_EXPR_PAYLOAD_OFFSET), length: u32(NFTNL_EXPR_PAYLOAD_LEN), dreg: dreg)
        case "meta":
            let key: MetaKey
            switch u32(NFTNL_EXPR_META_KEY) {
            case NFT_META_L4PROTO.rawValue: key = .l4proto
            case NFT_META_MARK.rawValue: key = .mark
            default: return unknown
            }
            if let d = reg(NFTNL_EXPR_META_DREG) { return .meta(key: key, dreg: d) }
            if let s = reg(NFTNL_EXPR_META_SREG) { return .metaSet(key: key, sreg: s) }
            return unknown
        case "ct":
            guard let d = reg(NFTNL_EXPR_CT_DREG), !has(NFTNL_EXPR_CT_DIR) else { return unknown }
            switch u32(NFTNL_EXPR_CT_KEY) {
            case NFT_CT_STATE.rawValue: return .ct(key: .state, dreg: d)
            case NFT_CT_STATUS.rawValue: return .ct(key: .status, dreg: d)
            default: return unknown
            }
        case "cmp":
            guard let s = reg(NFTNL_EXPR_CMP_SREG) else { return unknown }
            switch u32(NFTNL_EXPR_CMP_OP) {
            case NFT_CMP_EQ.rawValue: return .cmp(sreg: s, op: .eq, data: bytes(NFTNL_EXPR_CMP_DATA))
            case NFT_CMP_NEQ.rawValue: return .cmp(sreg: s, op: .neq, data: bytes(NFTNL_EXPR_CMP_DATA))
            default: return unknown
            }
        case "bitwise":
            guard let s = reg(NFTNL_EXPR_BITWISE_SREG), let d = reg(NFTNL_EXPR_BITWISE_DREG),
                !has(NFTNL_EXPR_BITWISE_OP) || u32(NFTNL_EXPR_BITWISE_OP) == NFT_BITWISE_MASK_XOR.rawValue
            else { return unknown }
            return .bitwise(sreg: s, dreg: d, mask: bytes(NFTNL_EXPR_BITWISE_MASK), xor: bytes(NFTNL_EXPR_BITWISE_XOR))
        case "lookup":
            guard let set = str(NFTNL_EXPR_LOOKUP_SET), let s = reg(NFTNL_EXPR_LOOKUP_SREG),
                !has(NFTNL_EXPR_LOOKUP_FLAGS) || u32(NFTNL_EXPR_LOOKUP_FLAGS) == 0
            else { return unknown }
            return .lookup(set: set, sreg: s, dreg: reg(NFTNL_EXPR_LOOKUP_DREG))
        case "immediate":
            guard let d = reg(NFTNL_EXPR_IMM_DREG) else { return unknown }
            if d == .verdict {
                let code = Int32(bitPattern: u32(NFTNL_EXPR_IMM_VERDICT))
                return KernelNumbers.verdict(code, chain: str(NFTNL_EXPR_IMM_CHAIN)).map { .verdict($0) } ?? unknown
            }
            return .immediate(dreg: d, data: bytes(NFTNL_EXPR_IMM_DATA))
        case "numgen":
            guard let d = reg(NFTNL_EXPR_NG_DREG), u32(NFTNL_EXPR_NG_TYPE) == NFT_NG_RANDOM.rawValue else { return unknown }
            return .numgen(dreg: d, modulus: u32(NFTNL_EXPR_NG_MODULUS), offset: has(NFTNL_EXPR_NG_OFFSET) ? u32(NFTNL_EXPR_NG_OFFSET) : 0)
        case "nat":
            let family: IPFamily
            switch u32(NFTNL_EXPR_NAT_FAMILY) {
            case UInt32(NFPROTO_IPV4): family = .v4
            case UInt32(NFPROTO_IPV6): family = .v6
            default: return unknown
            }
            guard u32(NFTNL_EXPR_NAT_TYPE) == NFT_NAT_DNAT.rawValue, let a = reg(NFTNL_EXPR_NAT_REG_ADDR_MIN) else { return unknown }
            let p = reg(NFTNL_EXPR_NAT_REG_PROTO_MIN)
            // The kernel fills in max = min when only min was given, and reports both.
            guard reg(NFTNL_EXPR_NAT_REG_ADDR_MAX).map({ $0 == a }) ?? true,
                reg(NFTNL_EXPR_NAT_REG_PROTO_MAX).map({ $0 == p }) ?? true
            else { return unknown }
            var flags = has(NFTNL_EXPR_NAT_FLAGS) ? u32(NFTNL_EXPR_NAT_FLAGS) : 0
            flags &= ~NATFlags.mapIPs  // implied by the address register
            if p != nil { flags |= NATFlags.protoSpecified }  // implied by the port register
            return .dnat(family: family, addrReg: a, protoReg: p, flags: flags)
        case "masq":
            guard !has(NFTNL_EXPR_MASQ_REG_PROTO_MIN) else { return unknown }
            return .masquerade(flags: has(NFTNL_EXPR_MASQ_FLAGS) ? u32(NFTNL_EXPR_MASQ_FLAGS) : 0)
        case "reject":
            let type = u32(NFTNL_EXPR_REJECT_TYPE), code = nftnl_expr_get_u8(x, UInt16(NFTNL_EXPR_REJECT_CODE))
            if type == NFT_REJECT_TCP_RST.rawValue { return .reject(kind: .tcpReset) }
            if type == NFT_REJECT_ICMP_UNREACH.rawValue && code == 3 { return .reject(kind: .icmpPortUnreachable) }
            if type == NFT_REJECT_ICMP_UNREACH.rawValue && code == 4 { return .reject(kind: .icmpv6PortUnreachable) }
            return unknown
        case "dynset":
            guard let k = reg(NFTNL_EXPR_DYNSET_SREG_KEY), let set = str(NFTNL_EXPR_DYNSET_SET_NAME),
                u32(NFTNL_EXPR_DYNSET_OP) == NFT_DYNSET_OP_UPDATE.rawValue, !has(NFTNL_EXPR_DYNSET_SREG_DATA),
                !has(NFTNL_EXPR_DYNSET_TIMEOUT) || nftnl_expr_get_u64(x, UInt16(NFTNL_EXPR_DYNSET_TIMEOUT)) == 0
            else { return unknown }
            return .dynsetUpdate(set: set, sreg: k)
        case "fib":
            guard let d = reg(NFTNL_EXPR_FIB_DREG), u32(NFTNL_EXPR_FIB_RESULT) == NFT_FIB_RESULT_ADDRTYPE.rawValue else { return unknown }
            switch u32(NFTNL_EXPR_FIB_FLAGS) {
            case NFTA_FIB_F_DADDR.rawValue: return .fibDaddrType(dreg: d)
            case NFTA_FIB_F_SADDR.rawValue: return .fibSaddrType(dreg: d)
            default: return unknown
            }
        default:
            return unknown
        }
    }
}
