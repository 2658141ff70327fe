import CNftables
import Glibc
import NFTModel

/// Deletes connection-tracking entries over ctnetlink (the kernel's nf_conntrack netlink
/// interface; `conntrack -D` does the same). The corresponding libmnl calls are
/// `mnl_nlmsg_put_header`, `mnl_attr_nest_start` and `mnl_attr_put_*`.
public final class Conntrack {
    private let socket: NetlinkChannel
    private var seq: UInt32

    public convenience init() throws { try self.init(transport: NetlinkSocket()) }

    public init(transport: NetlinkTransport) {
        socket = NetlinkChannel(transport)
        seq = UInt32(truncatingIfNeeded: time(nil)) &* 7
    }

    struct Tuple {
        var src: IPAddress, dst: IPAddress
        var proto: UInt8
        var sport: UInt16, dport: UInt16  // network order
    }

    /// One dumped entry: its tuples, and what names it exactly (its zone, and the id the kernel
    /// gave it, so a delete cannot hit a newer flow with the same tuple).
    struct Flow {
        var original: Tuple, reply: Tuple
        var zone: UInt16?  // network order, as dumped; absent in the default zone
        var id: UInt32?  // network order
        var status: UInt32?  // host order
        /// Whether the kernel changed its destination (IPS_DST_NAT): a DNATed flow.
        var destinationNATed: Bool { (status ?? 0) & IPS_DST_NAT.rawValue != 0 }
    }

    /// The conntrack dumps made so far: each walks the node's whole conntrack table in the kernel.
    public private(set) var dumps = 0

    /// Whether this kernel filters conntrack dumps itself (CTA_FILTER, Linux 5.8 and later);
    /// set false at the first refusal, and the filtering is then done here alone.
    public private(set) var kernelFilters = true
    /// Up to this many frontends get a dump each, filtered by the kernel to that frontend; more
    /// share one dump filtered to UDP.
    static let filteredDumpLimit = 16

    /// Deletes every UDP flow (IPv4 and IPv6) that matches one of the filters; returns how many went.
    ///
    /// With an index, the flows DNATed to a removed endpoint come from it, and no dump is made
    /// (a stale index is read again first, with one dump of the DNATed UDP flows). Otherwise,
    /// and for the filters of flows that were not NATed, the kernel is asked for only the flows
    /// to each changed frontend (protocol, original destination and port), so a node with
    /// 200,000 unrelated flows is not dumped whole; the filters are still applied here, to every
    /// flow the kernel returns.
    @discardableResult
    public func deleteUDPFlows(matching filters: [FlowFilter], index: FlowIndex? = nil) throws -> Int {
        guard !filters.isEmpty else { return 0 }
        var doomed: [Flow] = []
        var toDump = filters
        if let index, index.givenUp == nil {
            index.drain()
            if index.stale != nil { try seed(index) }
        }
        if let index, index.stale == nil {
            toDump = filters.filter { $0.endpoint == nil }
            var seen = Set<FlowIndex.Key>()
            for f in filters {
                guard let e = f.endpoint else { continue }
                for flow in index.flows(to: e.ip, port: e.port) {
                    let (o, r) = (flow.original, flow.reply)
                    guard
                        f.matches(
                            originalDestination: o.dst, originalPort: UInt16(bigEndian: o.dport), replySource: r.src,
                            replyPort: UInt16(bigEndian: r.sport))
                    else { continue }
                    if seen.insert(FlowIndex.key(flow)).inserted { doomed.append(flow) }
                }
            }
        }
        for family in [AF_INET, AF_INET6] where !toDump.isEmpty {
            let ipFamily: IPFamily = family == AF_INET ? .v4 : .v6
            // A node port's "not NATed" filter names no address: it holds for both families.
            let wanted = toDump.filter { f in (f.destination ?? f.endpoint?.ip).map { $0.family == ipFamily } ?? true }
            guard !wanted.isEmpty else { continue }
            // IPv6 destinations are left to the check here: kernels compare them inverted in
            // dump filters (seen on 6.18: a filter on the flow's own address returned nothing).
            let frontends = Set(wanted.map { DumpFilter(destination: family == AF_INET ? $0.destination : nil, port: $0.port) })
            let dumps: [DumpFilter?] =
                frontends.count <= Self.filteredDumpLimit ? frontends.sorted() : [DumpFilter(destination: nil, port: nil)]
            for dump in dumps {
                try dumpUDP(family: family, filter: dump) { flow in
                    let (o, r) = (flow.original, flow.reply)
                    if wanted.contains(where: {
                        $0.matches(
                            originalDestination: o.dst, originalPort: UInt16(bigEndian: o.dport), replySource: r.src,
                            replyPort: UInt16(bigEndian: r.sport))
                    }) {
                        doomed.append(flow)
                    }
                }
            }
        }
        var deleted = 0
        for flow in doomed {
            defer { index?.forget(flow) }
            do {
                try delete(flow)
                deleted += 1
            } catch let e as NetlinkError where e.errno == ENOENT {
                continue  // gone meanwhile, or replaced by a newer flow with the same tuple
            }
        }
        return deleted
    }

    /// Reads the index again from the kernel: one dump per family of the UDP flows whose
    /// destination was NATed (the kernel filters by status where it can; checked here too).
    public func seed(_ index: FlowIndex) throws {
        index.drain()  // what came before the dump is in it
        var flows: [Flow] = []
        for family in [AF_INET, AF_INET6] {
            try dumpUDP(family: family, filter: DumpFilter(destination: nil, port: nil), natted: true) { flow in
                if flow.destinationNATed { flows.append(flow) }
            }
        }
        index.seed(flows)
    }

    /// What a dump asks the kernel to return: UDP, and optionally one original destination
    /// address and port.
    struct DumpFilter: Hashable, Comparable {
        var destination: IPAddress?
        var port: UInt16?
        static func < (a: DumpFilter, b: DumpFilter) -> Bool {
            (a.destination?.description ?? "", a.port ?? 0) < (b.destination?.description ?? "", b.port ?? 0)
        }
    }

    private func header(_ buf: UnsafeMutableRawPointer, type: Int32, flags: Int32, family: Int32) -> UnsafeMutablePointer<nlmsghdr> {
        let nlh = mnl_nlmsg_put_header(buf)!
        nlh.pointee.nlmsg_type = UInt16(NFNL_SUBSYS_CTNETLINK << 8) | UInt16(type)
        nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | flags)
        seq &+= 1
        nlh.pointee.nlmsg_seq = seq
        let nfg = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<nfgenmsg>.size)!.assumingMemoryBound(to: nfgenmsg.self)
        nfg.pointee.nfgen_family = UInt8(family)
        nfg.pointee.version = UInt8(NFNETLINK_V0)
        nfg.pointee.res_id = 0
        return nlh
    }

    /// `natted` asks the kernel for flows with IPS_DST_NAT only (CTA_STATUS and its mask; a
    /// kernel that does not know them in a dump returns every flow, and the caller checks).
    private func dumpUDP(family: Int32, filter: DumpFilter?, natted: Bool = false, _ each: (Flow) -> Void) throws {
        if let filter, kernelFilters {
            do { return try dumpUDPOnce(family: family, filter: filter, natted: natted, each) } catch let e as NetlinkError
                where e.errno == EINVAL || e.errno == EOPNOTSUPP
            {
                kernelFilters = false  // a kernel before CTA_FILTER
            }
        }
        try dumpUDPOnce(family: family, filter: nil, natted: false, each)
    }

    private func dumpUDPOnce(family: Int32, filter: DumpFilter?, natted: Bool, _ each: (Flow) -> Void) throws {
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
        defer { buf.deallocate() }
        dumps += 1
        let nlh = header(buf, type: Int32(IPCTNL_MSG_CT_GET.rawValue), flags: NLM_F_DUMP, family: family)
        if natted {
            mnl_attr_put_u32(nlh, UInt16(CTA_STATUS.rawValue), IPS_DST_NAT.rawValue.bigEndian)
            mnl_attr_put_u32(nlh, UInt16(CTA_STATUS_MASK.rawValue), IPS_DST_NAT.rawValue.bigEndian)
        }
        if let filter {
            // CTA_FILTER's flags say which fields of CTA_TUPLE_ORIG must match (the kernel's
            // CTA_FILTER_F_CTA_* bits: IP_DST 1<<1, PROTO_NUM 1<<3, PROTO_DST_PORT 1<<5).
            var flags: UInt32 = 1 << 3
            let tuple = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_ORIG.rawValue))
            if let d = filter.destination {
                flags |= 1 << 1
                let ip = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_IP.rawValue))
                d.bytes.withUnsafeBytes {
                    mnl_attr_put(nlh, UInt16((d.family == .v4 ? CTA_IP_V4_DST : CTA_IP_V6_DST).rawValue), $0.count, $0.baseAddress)
                }
                mnl_attr_nest_end(nlh, ip)
            }
            let proto = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_PROTO.rawValue))
            mnl_attr_put_u8(nlh, UInt16(CTA_PROTO_NUM.rawValue), UInt8(IPPROTO_UDP))
            if let p = filter.port {
                flags |= 1 << 5
                mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_DST_PORT.rawValue), p.bigEndian)
            }
            mnl_attr_nest_end(nlh, proto)
            mnl_attr_nest_end(nlh, tuple)
            let f = mnl_attr_nest_start(nlh, UInt16(CTA_FILTER.rawValue))
            mnl_attr_put_u32(nlh, UInt16(CTA_FILTER_ORIG_FLAGS.rawValue), flags)
            mnl_attr_nest_end(nlh, f)
        }
        let mySeq = nlh.pointee.nlmsg_seq
        try socket.send(UnsafeRawBufferPointer(start: buf, count: Int(nlh.pointee.nlmsg_len)), what: "list conntrack entries")
        var done = false
        while !done {
            try socket.receive { h in
                guard h.pointee.nlmsg_seq == mySeq else { return }
                switch Int32(h.pointee.nlmsg_type) {
                case NLMSG_DONE:
                    if let e = h.doneError { throw NetlinkError("list conntrack entries", errno: e) }
                    done = true
                case NLMSG_ERROR:
                    let (err, _) = h.errorPayload
                    if err != 0 { throw NetlinkError("list conntrack entries", errno: err) }
                    done = true
                default:
                    if let flow = Self.flow(h), flow.original.proto == UInt8(IPPROTO_UDP) { each(flow) }
                }
            }
        }
    }

    /// One conntrack message's flow (a dumped entry, or a NEW or DESTROY event).
    static func flow(_ h: UnsafePointer<nlmsghdr>) -> Flow? {
        let payload = UnsafeRawPointer(mnl_nlmsg_get_payload_offset(h, MemoryLayout<nfgenmsg>.size))
        let len = Int(h.pointee.nlmsg_len) - Int(mnl_nlmsg_size(0)) - MemoryLayout<nfgenmsg>.size.alignedTo4
        let attrs = Attributes(UnsafeRawBufferPointer(start: payload, count: max(0, len)))
        guard let o = attrs[Int(CTA_TUPLE_ORIG.rawValue)].flatMap(Self.tuple),
            let r = attrs[Int(CTA_TUPLE_REPLY.rawValue)].flatMap(Self.tuple)
        else { return nil }
        return Flow(
            original: o, reply: r, zone: attrs.u16(Int(CTA_ZONE.rawValue)), id: attrs.u32(Int(CTA_ID.rawValue)),
            status: attrs.u32(Int(CTA_STATUS.rawValue)).map { UInt32(bigEndian: $0) })
    }

    /// Deletes one flow by its original tuple, in its zone, and only if it is still the flow
    /// with that id (as vishvananda/netlink and conntrack-tools do): ENOENT otherwise.
    private func delete(_ flow: Flow) throws {
        let t = flow.original
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 1024, alignment: 8)
        defer { buf.deallocate() }
        let v4 = t.src.family == .v4
        let nlh = header(buf, type: Int32(IPCTNL_MSG_CT_DELETE.rawValue), flags: NLM_F_ACK, family: v4 ? AF_INET : AF_INET6)
        let tuple = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_ORIG.rawValue))
        let ip = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_IP.rawValue))
        for (type, addr) in [(v4 ? CTA_IP_V4_SRC : CTA_IP_V6_SRC, t.src), (v4 ? CTA_IP_V4_DST : CTA_IP_V6_DST, t.dst)] {
            addr.bytes.withUnsafeBytes { mnl_attr_put(nlh, UInt16(type.rawValue), $0.count, $0.baseAddress) }
        }
        mnl_attr_nest_end(nlh, ip)
        let proto = mnl_attr_nest_start(nlh, UInt16(CTA_TUPLE_PROTO.rawValue))
        mnl_attr_put_u8(nlh, UInt16(CTA_PROTO_NUM.rawValue), t.proto)
        mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_SRC_PORT.rawValue), t.sport)
        mnl_attr_put_u16(nlh, UInt16(CTA_PROTO_DST_PORT.rawValue), t.dport)
        mnl_attr_nest_end(nlh, proto)
        mnl_attr_nest_end(nlh, tuple)
        if let zone = flow.zone { mnl_attr_put_u16(nlh, UInt16(CTA_ZONE.rawValue), zone) }
        if let id = flow.id { mnl_attr_put_u32(nlh, UInt16(CTA_ID.rawValue), id) }
        let mySeq = nlh.pointee.nlmsg_seq
        try socket.send(UnsafeRawBufferPointer(start: buf, count: Int(nlh.pointee.nlmsg_len)), what: "delete conntrack entry")
        var done = false
        while !done {
            try socket.receive { h in
                guard h.pointee.nlmsg_seq == mySeq, Int32(h.pointee.nlmsg_type) == NLMSG_ERROR else { return }
                let (err, _) = h.errorPayload
                if err != 0 { throw NetlinkError("delete conntrack entry", errno: err) }
                done = true
            }
        }
    }

    /// Reads a CTA_TUPLE_* nest: addresses and ports stay in network order.
    static func tuple(_ raw: UnsafeRawBufferPointer) -> Tuple? {
        let a = Attributes(raw)
        guard let ip = a[Int(CTA_TUPLE_IP.rawValue)].map(Attributes.init),
            let proto = a[Int(CTA_TUPLE_PROTO.rawValue)].map(Attributes.init),
            let num = proto[Int(CTA_PROTO_NUM.rawValue)]?.first
        else { return nil }
        let src: IPAddress?, dst: IPAddress?
        if let s = ip[Int(CTA_IP_V4_SRC.rawValue)], let d = ip[Int(CTA_IP_V4_DST.rawValue)] {
            (src, dst) = (IPAddress(bytes: Array(s)), IPAddress(bytes: Array(d)))
        } else {
            (src, dst) = (
                ip[Int(CTA_IP_V6_SRC.rawValue)].flatMap { IPAddress(bytes: Array($0)) },
                ip[Int(CTA_IP_V6_DST.rawValue)].flatMap { IPAddress(bytes: Array($0)) }
            )
        }
        guard let src, let dst else { return nil }
        return Tuple(
            src: src, dst: dst, proto: num, sport: proto.u16(Int(CTA_PROTO_SRC_PORT.rawValue)) ?? 0,
            dport: proto.u16(Int(CTA_PROTO_DST_PORT.rawValue)) ?? 0)
    }
}

/// The netlink attributes of a payload, by type (nested flag cleared). Conntrack's types are
/// small numbers (below 32), so they index an array: an event is read at a new flow's rate.
struct Attributes {
    private var byType: [UnsafeRawBufferPointer?]
    static let types = 32

    init(_ raw: UnsafeRawBufferPointer) {
        byType = Array(repeating: nil, count: Self.types)
        var at = 0
        while at + 4 <= raw.count {
            let len = Int(raw.loadUnaligned(fromByteOffset: at, as: UInt16.self))
            let type = Int(raw.loadUnaligned(fromByteOffset: at + 2, as: UInt16.self)) & ~(Int(NLA_F_NESTED) | Int(NLA_F_NET_BYTEORDER))
            guard len >= 4, at + len <= raw.count else { break }
            if type < Self.types { byType[type] = UnsafeRawBufferPointer(rebasing: raw[(at + 4)..<(at + len)]) }
            at += len.alignedTo4
        }
    }

    subscript(_ type: Int) -> UnsafeRawBufferPointer? { type < Self.types ? byType[type] : nil }
    func u32(_ type: Int) -> UInt32? { self[type].flatMap { $0.count >= 4 ? $0.loadUnaligned(as: UInt32.self) : nil } }
    func u16(_ type: Int) -> UInt16? { self[type].flatMap { $0.count >= 2 ? $0.loadUnaligned(as: UInt16.self) : nil } }
}

extension Int {
    var alignedTo4: Int { (self + 3) & ~3 }
}
