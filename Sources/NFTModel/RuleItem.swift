/// The building blocks of svcnat's rules, each one a fixed expression pattern with one reading
/// in nft syntax. A rule is a list of items; `lower` gives what the kernel receives, `parse` reads
/// a kernel rule back into items (falling back to `.raw` for anything svcnat did not write), and
/// `nftText` prints the item the way `nft list ruleset` does, so the same rule reads the same
/// whether it was planned or dumped.
public enum RuleItem: Hashable, Sendable {
    case ctStateNew
    case ctStatusDNAT
    case l4proto(TransportProtocol)
    /// `ip saddr|daddr [!=] prefix`.
    case ipMatch(IPField, CmpOp, IPPrefix)
    /// `fib daddr type local`: the destination is an address of this host.
    case fibDaddrLocal
    /// `fib saddr type local`: the packet comes from this host.
    case fibSaddrLocal
    /// `ip daddr @set` (`ip6` for IPv6)
    case daddrInSet(String, IPFamily)
    /// `ip saddr @set`
    case saddrInSet(String, IPFamily)
    /// `update @set { ip saddr }`: remember this client (session affinity).
    case rememberSaddr(String, IPFamily)
    /// `meta l4proto . th dport vmap @map` (node ports).
    case nodePortDispatch(map: String)
    case markIsClear(UInt32)
    case markSetOr(UInt32)
    case markSetXor(UInt32)
    /// `numgen random mod n == 0`: true with probability 1/n.
    case numgenIsZero(modulus: UInt32)
    case dnat(IPAddress, port: UInt16)
    /// `dnat ip to numgen random mod n offset base map @m`: picks element base + random(n) of
    /// the endpoint map m, each with probability 1/n.
    case dnatFromMap(modulus: UInt32, offset: UInt32, map: String, family: IPFamily)
    case masquerade(fullyRandom: Bool)
    case reject(RejectKind)
    /// `ip daddr . meta l4proto . th dport vmap @set`
    case dispatch(map: String, family: IPFamily)
    /// `ip saddr . ip daddr @set`
    case saddrDaddrIn(set: String, family: IPFamily)
    case verdict(Verdict)
    case raw(Expr)
}

public enum IPField: Hashable, Sendable {
    case saddr, daddr
    func offset(_ family: IPFamily) -> UInt32 { self == .saddr ? family.saddrOffset : family.daddrOffset }
    var name: String { self == .saddr ? "saddr" : "daddr" }
}

extension RuleItem {
    public static func saddrNotIn(_ p: IPPrefix) -> RuleItem { .ipMatch(.saddr, .neq, p) }
}

public struct Rule: Hashable, Sendable {
    public var items: [RuleItem]
    /// The kernel's handle, for rules read back from the kernel; never part of a comparison.
    public var handle: UInt64?
    /// The rule's comment (its userdata, as nft writes it).
    public var comment: String?

    public init(_ items: [RuleItem], handle: UInt64? = nil, comment: String? = nil) {
        self.items = items
        self.handle = handle
        self.comment = comment
    }

    public init(exprs: [Expr], family: IPFamily, handle: UInt64? = nil, comment: String? = nil) {
        self.items = RuleItem.parse(exprs, family: family)
        self.handle = handle
        self.comment = comment
    }

    public var exprs: [Expr] { items.flatMap(\.exprs) }

    public static func == (a: Rule, b: Rule) -> Bool { a.items == b.items && a.comment == b.comment }
    public func hash(into h: inout Hasher) { h.combine(items) }

    /// The rule in nft syntax, as `nft list ruleset` prints it (and `nft -f` reads it).
    public var nftText: String {
        var s = NftTextSink()
        write(to: &s)
        return String(decoding: s.bytes, as: UTF8.self)
    }

    func write(to s: inout NftTextSink) {
        for (i, item) in items.enumerated() {
            if i > 0 { s.byte(0x20) }
            item.write(to: &s)
        }
        if let comment { s += " comment \"\(comment)\"" }
    }

    /// Chains this rule jumps or goes to.
    public var chainTargets: [String] {
        items.compactMap { if case .verdict(let v) = $0 { v.target } else { nil } }
    }

    /// Named sets this rule looks up.
    public var setReferences: [String] {
        items.compactMap {
            switch $0 {
            case .dispatch(let s, _), .saddrDaddrIn(let s, _), .dnatFromMap(_, _, let s, _), .daddrInSet(let s, _),
                .nodePortDispatch(let s),
                .saddrInSet(let s, _), .rememberSaddr(let s, _):
                s
            case .raw(.lookup(let s, _, _)): s
            default: nil
            }
        }
    }
}

private let r1 = Register.reg(1), r2 = Register.reg(2)

extension Register {
    /// The register at 32-bit position `n` of a concatenation, named as the kernel reports it
    /// back: a 16-byte register where one starts (every 4th position), else a 4-byte one.
    static func at(_ n: Int) -> Register { n % 4 == 0 ? .reg(n / 4 + 1) : .reg32(n) }
}

extension IPFamily {
    /// The register right after an address in a concatenation (4 bytes in, or 16).
    var afterAddress: Register { .at(addressLength / 4) }
}

extension RuleItem {
    public var exprs: [Expr] {
        switch self {
        case .ctStateNew:
            [
                .ct(key: .state, dreg: r1),
                .bitwise(sreg: r1, dreg: r1, mask: CtBits.stateNew.hostBytes, xor: [0, 0, 0, 0]),
                .cmp(sreg: r1, op: .neq, data: [0, 0, 0, 0])
            ]
        case .ctStatusDNAT:
            [
                .ct(key: .status, dreg: r1),
                .bitwise(sreg: r1, dreg: r1, mask: CtBits.statusDNAT.hostBytes, xor: [0, 0, 0, 0]),
                .cmp(sreg: r1, op: .neq, data: [0, 0, 0, 0])
            ]
        case .l4proto(let p):
            [.meta(key: .l4proto, dreg: r1), .cmp(sreg: r1, op: .eq, data: [p.number])]
        case .ipMatch(let field, let op, let prefix):
            // As nft encodes it: a byte-aligned prefix loads only its bytes; otherwise the
            // whole bytes it touches, masked.
            Self.prefixMatch(offset: field.offset(prefix.family), prefix: prefix, op: op)
        case .fibDaddrLocal:
            [.fibDaddrType(dreg: r1), .cmp(sreg: r1, op: .eq, data: RouteType.local.hostBytes)]
        case .fibSaddrLocal:
            [.fibSaddrType(dreg: r1), .cmp(sreg: r1, op: .eq, data: RouteType.local.hostBytes)]
        case .daddrInSet(let set, let f):
            [
                .payload(base: .network, offset: f.daddrOffset, length: UInt32(f.addressLength), dreg: r1),
                .lookup(set: set, sreg: r1, dreg: nil)
            ]
        case .saddrInSet(let set, let f):
            [
                .payload(base: .network, offset: f.saddrOffset, length: UInt32(f.addressLength), dreg: r1),
                .lookup(set: set, sreg: r1, dreg: nil)
            ]
        case .rememberSaddr(let set, let f):
            [.payload(base: .network, offset: f.saddrOffset, length: UInt32(f.addressLength), dreg: r1), .dynsetUpdate(set: set, sreg: r1)]
        case .nodePortDispatch(let map):
            [
                .meta(key: .l4proto, dreg: r1), .payload(base: .transport, offset: 2, length: 2, dreg: .reg32(1)),
                .lookup(set: map, sreg: r1, dreg: .verdict)
            ]
        case .markIsClear(let bits):
            [
                .meta(key: .mark, dreg: r1),
                .bitwise(sreg: r1, dreg: r1, mask: bits.hostBytes, xor: [0, 0, 0, 0]),
                .cmp(sreg: r1, op: .eq, data: [0, 0, 0, 0])
            ]
        case .markSetOr(let bits):
            [
                .meta(key: .mark, dreg: r1),
                .bitwise(sreg: r1, dreg: r1, mask: (~bits).hostBytes, xor: bits.hostBytes),
                .metaSet(key: .mark, sreg: r1)
            ]
        case .markSetXor(let bits):
            [
                .meta(key: .mark, dreg: r1),
                .bitwise(sreg: r1, dreg: r1, mask: UInt32.max.hostBytes, xor: bits.hostBytes),
                .metaSet(key: .mark, sreg: r1)
            ]
        case .numgenIsZero(let n):
            [.numgen(dreg: r1, modulus: n, offset: 0), .cmp(sreg: r1, op: .eq, data: [0, 0, 0, 0])]
        case .dnat(let addr, let port):
            [
                .immediate(dreg: r1, data: addr.bytes), .immediate(dreg: r2, data: port.networkBytes),
                .dnat(family: addr.family, addrReg: r1, protoReg: r2, flags: NATFlags.protoSpecified)
            ]
        case .dnatFromMap(let n, let offset, let map, let f):
            [
                .numgen(dreg: r1, modulus: n, offset: offset), .lookup(set: map, sreg: r1, dreg: r1),
                .dnat(family: f, addrReg: r1, protoReg: f.afterAddress, flags: NATFlags.protoSpecified)
            ]
        case .masquerade(let fullyRandom):
            [.masquerade(flags: fullyRandom ? NATFlags.fullyRandom : 0)]
        case .reject(let kind):
            [.reject(kind: kind)]
        case .dispatch(let map, let f):
            [
                .payload(base: .network, offset: f.daddrOffset, length: UInt32(f.addressLength), dreg: r1),
                .meta(key: .l4proto, dreg: f.afterAddress),
                .payload(base: .transport, offset: 2, length: 2, dreg: .at(f.addressLength / 4 + 1)),
                .lookup(set: map, sreg: r1, dreg: .verdict)
            ]
        case .saddrDaddrIn(let set, let f):
            [
                .payload(base: .network, offset: f.saddrOffset, length: UInt32(f.addressLength), dreg: r1),
                .payload(base: .network, offset: f.daddrOffset, length: UInt32(f.addressLength), dreg: f.afterAddress),
                .lookup(set: set, sreg: r1, dreg: nil)
            ]
        case .verdict(let v):
            [.verdict(v)]
        case .raw(let e):
            [e]
        }
    }

    static func prefixMatch(offset: UInt32, prefix: IPPrefix, op: CmpOp) -> [Expr] {
        if prefix.length == 0 {
            // No bytes to compare, and the kernel refuses a zero-length load: like nft, load the
            // whole address and mask it all away (`ip saddr 0.0.0.0/0`, true for every packet).
            let n = prefix.family.addressLength
            let zero = [UInt8](repeating: 0, count: n)
            return [
                .payload(base: .network, offset: offset, length: UInt32(n), dreg: r1),
                .bitwise(sreg: r1, dreg: r1, mask: zero, xor: zero),
                .cmp(sreg: r1, op: op, data: zero)
            ]
        }
        let bytes = (prefix.length + 7) / 8
        let data = Array(prefix.address.bytes.prefix(bytes))
        if prefix.length % 8 == 0 {
            return [
                .payload(base: .network, offset: offset, length: UInt32(bytes), dreg: r1),
                .cmp(sreg: r1, op: op, data: data)
            ]
        }
        let mask = Array(prefix.mask.bytes.prefix(bytes))
        return [
            .payload(base: .network, offset: offset, length: UInt32(bytes), dreg: r1),
            .bitwise(sreg: r1, dreg: r1, mask: mask, xor: [UInt8](repeating: 0, count: bytes)),
            .cmp(sreg: r1, op: op, data: data)
        ]
    }

    /// Reads kernel expressions back into items: at each position, the first item whose
    /// pattern matches is taken; an expression no pattern explains becomes `.raw`.
    public static func parse(_ exprs: [Expr], family: IPFamily) -> [RuleItem] {
        var items: [RuleItem] = []
        var i = 0
        while i < exprs.count {
            if let (item, n) = match(exprs, at: i, family: family) {
                items.append(item)
                i += n
            } else {
                items.append(.raw(exprs[i]))
                i += 1
            }
        }
        return items
    }

    private static func match(_ e: [Expr], at i: Int, family f: IPFamily) -> (RuleItem, Int)? {
        let alen = UInt32(f.addressLength)
        func starts(_ item: RuleItem) -> (RuleItem, Int)? {
            let pattern = item.exprs
            guard i + pattern.count <= e.count, Array(e[i..<i + pattern.count]) == pattern else { return nil }
            return (item, pattern.count)
        }
        switch e[i] {
        case .ct(.state, _): return starts(.ctStateNew)
        case .ct(.status, _): return starts(.ctStatusDNAT)
        case .fibDaddrType: return starts(.fibDaddrLocal)
        case .fibSaddrType: return starts(.fibSaddrLocal)
        case .meta(.l4proto, r1):
            if i + 2 < e.count, case .lookup(let m, r1, .verdict) = e[i + 2] { return starts(.nodePortDispatch(map: m)) }
            guard i + 1 < e.count, case .cmp(r1, .eq, let d) = e[i + 1], d.count == 1,
                let p = TransportProtocol(number: d[0])
            else { return nil }
            return (.l4proto(p), 2)
        case .meta(.mark, r1):
            guard i + 2 < e.count, case .bitwise(r1, r1, let mask, let xor) = e[i + 1],
                let m = UInt32(hostBytes: mask), let x = UInt32(hostBytes: xor)
            else { return nil }
            if case .metaSet(.mark, r1) = e[i + 2] {
                if m == .max { return (.markSetXor(x), 3) }
                if m == ~x { return (.markSetOr(x), 3) }
            }
            if x == 0, case .cmp(r1, .eq, [0, 0, 0, 0]) = e[i + 2] { return (.markIsClear(m), 3) }
            return nil
        case .numgen(r1, let n, let offset):
            if i + 1 < e.count, case .lookup(let m, r1, r1) = e[i + 1] {
                return starts(.dnatFromMap(modulus: n, offset: offset, map: m, family: f))
            }
            return offset == 0 ? starts(.numgenIsZero(modulus: n)) : nil
        case .immediate(r1, let a) where a.count == f.addressLength:
            guard i + 1 < e.count, case .immediate(r2, let p) = e[i + 1], p.count == 2,
                let addr = IPAddress(bytes: a)
            else { return nil }
            return starts(.dnat(addr, port: UInt16(p[0]) << 8 | UInt16(p[1])))
        case .masquerade(let flags):
            if flags == 0 { return (.masquerade(fullyRandom: false), 1) }
            if flags == NATFlags.fullyRandom { return (.masquerade(fullyRandom: true), 1) }
            return nil
        case .reject(let k): return (.reject(k), 1)
        case .payload(.network, f.daddrOffset, alen, r1):
            if i + 3 < e.count, case .lookup(let s, r1, .verdict) = e[i + 3] { return starts(.dispatch(map: s, family: f)) }
            if i + 1 < e.count, case .lookup(let s, r1, nil) = e[i + 1] { return starts(.daddrInSet(s, f)) }
            return matchPrefix(e, at: i, family: f)
        case .payload(.network, f.saddrOffset, alen, r1):
            if i + 2 < e.count, case .lookup(let s, r1, nil) = e[i + 2],
                let m = starts(.saddrDaddrIn(set: s, family: f))
            {
                return m
            }
            if i + 1 < e.count, case .lookup(let s, r1, nil) = e[i + 1] { return starts(.saddrInSet(s, f)) }
            if i + 1 < e.count, case .dynsetUpdate(let s, r1) = e[i + 1] { return starts(.rememberSaddr(s, f)) }
            return matchPrefix(e, at: i, family: f)
        case .payload(.network, f.saddrOffset, _, r1), .payload(.network, f.daddrOffset, _, r1):
            return matchPrefix(e, at: i, family: f)
        case .verdict(let v): return (.verdict(v), 1)
        default: return nil
        }
    }

    private static func matchPrefix(_ e: [Expr], at i: Int, family f: IPFamily) -> (RuleItem, Int)? {
        guard case .payload(_, let offset, let len, _) = e[i], len >= 1, len <= f.addressLength,
            offset == f.saddrOffset || offset == f.daddrOffset
        else { return nil }
        var mask = [UInt8](repeating: 0xff, count: Int(len))
        var j = i + 1
        if j < e.count, case .bitwise(r1, r1, let m, _) = e[j] { mask = m; j += 1 }
        guard j < e.count, case .cmp(r1, let op, let data) = e[j], data.count == Int(len) else { return nil }
        let ones = mask.reduce(0) { $0 + $1.nonzeroBitCount }
        let full = Array((data + [UInt8](repeating: 0, count: f.addressLength)).prefix(f.addressLength))
        guard let addr = IPAddress(bytes: full) else { return nil }
        let item = RuleItem.ipMatch(offset == f.saddrOffset ? .saddr : .daddr, op, IPPrefix(address: addr, length: ones))
        return item.exprs == Array(e[i...j]) ? (item, j - i + 1) : nil
    }
}

extension RuleItem {
    public var nftText: String {
        var s = NftTextSink()
        write(to: &s)
        return String(decoding: s.bytes, as: UTF8.self)
    }

    /// The item in nft syntax; a dry run writes 20,000 rules' worth, so the common items
    /// format their numbers and addresses in place.
    func write(to s: inout NftTextSink) {
        switch self {
        case .ctStateNew: s += "ct state new"
        case .ctStatusDNAT: s += "ct status dnat"
        case .l4proto(let p):
            s += "meta l4proto "
            s += p.lowercased
        case .ipMatch(let f, let op, let p):
            s += p.family.nftName
            s += " "
            s += f.name
            s += op == .neq ? " != " : " "
            if p.family == .v4 {
                s.ipv4(p.address.v4Value)
                if p.length != p.family.bits {
                    s.byte(0x2F)
                    s.decimal(UInt32(p.length))
                }
            } else {
                s += p.length == p.family.bits ? p.address.description : p.description
            }
        case .fibDaddrLocal: s += "fib daddr type local"
        case .fibSaddrLocal: s += "fib saddr type local"
        case .daddrInSet(let set, let f): s += "\(f.nftName) daddr @\(set)"
        case .saddrInSet(let set, let f): s += "\(f.nftName) saddr @\(set)"
        case .rememberSaddr(let set, let f): s += "update @\(set) { \(f.nftName) saddr }"
        case .nodePortDispatch(let m): s += "meta l4proto . th dport vmap @\(m)"
        case .markIsClear(let b): s += "meta mark & \(hex(b)) == \(hex(0))"
        case .markSetOr(let b):
            s += "meta mark set meta mark | "
            s += hex(b)
        case .markSetXor(let b): s += "meta mark set meta mark ^ \(hex(b))"
        case .numgenIsZero(let n): s += "numgen random mod \(n) == 0"
        case .dnat(let a, let p): s += a.family == .v4 ? "dnat to \(a):\(p)" : "dnat to [\(a)]:\(p)"
        case .dnatFromMap(let n, let o, let m, let f):
            s += "dnat "
            s += f.nftName
            s += " to numgen random mod "
            s.decimal(n)
            s += " offset "
            s.decimal(o)
            s += " map @"
            s += m
        case .masquerade(let r): s += r ? "masquerade fully-random" : "masquerade"
        case .reject(.tcpReset): s += "reject with tcp reset"
        case .reject(.icmpPortUnreachable): s += "reject with icmp port-unreachable"
        case .reject(.icmpv6PortUnreachable): s += "reject with icmpv6 port-unreachable"
        case .dispatch(let m, let f): s += "\(f.nftName) daddr . meta l4proto . th dport vmap @\(m)"
        case .saddrDaddrIn(let set, let f): s += "\(f.nftName) saddr . \(f.nftName) daddr @\(set)"
        case .verdict(let v): v.write(to: &s)
        case .raw(let e): s += "# unrecognised expression: \(e)"
        }
    }
}

func hex(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, 8 - s.count)) + s
}
