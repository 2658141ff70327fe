import CNftables
import Glibc
import NFTModel

/// The node's DNATed UDP flows, by the endpoint they were sent to, kept current from the
/// kernel's conntrack events: a UDP endpoint's removal then names its stale flows without
/// walking the node's whole conntrack table (60 to 90 ms at 200,000 flows here: the floor of
/// any dump, however filtered).
///
/// A socket joins the conntrack NEW and DESTROY groups. A socket filter (classic BPF, run by
/// the kernel on each event before it is queued) lets through only UDP flows whose status says
/// their destination was NATed, so a node's TCP connections and un-NATed UDP cost nothing here.
/// The index starts from one dump (`Conntrack.seed`), and starts again from a dump whenever
/// events were lost (the kernel says ENOBUFS on a full receive buffer); past `limit` flows it is
/// given up, and the node's stale flows are found by dumps, as without an index.
public final class FlowIndex {
    /// Where replies of a DNATed flow come from: the endpoint. Port in host order.
    struct Endpoint: Hashable {
        var ip: IPAddress
        var port: UInt16
    }

    /// What names one flow among the live ones: its original tuple and zone.
    struct Key: Hashable {
        var src: IPAddress, dst: IPAddress
        var sport: UInt16, dport: UInt16
        var zone: UInt16
    }

    private var byEndpoint: [Endpoint: [Key: Conntrack.Flow]] = [:]
    /// The flows held.
    public private(set) var count = 0
    /// Why the index cannot be used as it is (never read, events lost, too large); nil when it
    /// holds every DNATed UDP flow the kernel has, as of the last `drain`.
    public private(set) var stale: String? = "not read yet"
    /// How many times it was read again from a dump.
    public private(set) var seeds = 0
    /// The events that passed the socket filter.
    public private(set) var events = 0
    /// Why the index was last found stale after its first read (events lost, too many flows).
    public private(set) var lastLoss: String?
    /// More flows than this (about 70 MB of index), and the index is given up for good: it
    /// leaves the event groups and stale flows are found by dumps again.
    public let limit: Int
    /// Set when the index was given up (too many flows); it is never used again.
    public private(set) var givenUp: String?

    private let raw: OpaquePointer
    private let buffer: UnsafeMutableRawBufferPointer

    /// Throws when conntrack events are off in this network namespace
    /// (`net.netfilter.nf_conntrack_events = 0`) or the socket cannot be had.
    public init() throws {
        if let setting = Self.eventsSetting(), setting == "0" {
            throw NetlinkError("listen to conntrack events (net.netfilter.nf_conntrack_events is 0)", errno: EOPNOTSUPP)
        }
        guard let raw = mnl_socket_open(NETLINK_NETFILTER) else { throw NetlinkError("open conntrack event socket", errno: Glibc.errno) }
        self.raw = raw
        buffer = .allocate(byteCount: 1 << 16, alignment: 8)
        let fd = mnl_socket_get_fd(raw)
        var size: Int32 = 16 << 20
        var force = SO_RCVBUFFORCE
        var limit = 250_000
        #if SVCNAT_TEST_HOOKS
            // Debug builds: a test makes the queue overflow, or the index too large, on purpose.
            if let small = getenv("SVCNAT_TEST_FLOW_EVENT_BUFFER").flatMap({ Int32(String(cString: $0)) }) {
                (size, force) = (small, SO_RCVBUF)
            }
            if let n = getenv("SVCNAT_TEST_FLOW_INDEX_LIMIT").flatMap({ Int(String(cString: $0)) }) { limit = n }
        #endif
        self.limit = limit
        if setsockopt(fd, SOL_SOCKET, force, &size, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        do {
            try Self.attachFilter(fd)
            if mnl_socket_bind(raw, 0, pid_t(MNL_SOCKET_AUTOPID)) < 0 {
                throw NetlinkError("bind conntrack event socket", errno: Glibc.errno)
            }
            for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
                var g = Int32(group.rawValue)
                if mnl_socket_setsockopt(raw, NETLINK_ADD_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size)) < 0 {
                    throw NetlinkError("join conntrack event group \(g)", errno: Glibc.errno)
                }
            }
        } catch {
            buffer.deallocate()
            mnl_socket_close(raw)
            throw error
        }
    }

    deinit {
        buffer.deallocate()
        mnl_socket_close(raw)
    }

    /// Readable when events are queued: the daemon drains it as they come, so the queue never
    /// fills between syncs.
    public var fileDescriptor: Int32 { mnl_socket_get_fd(raw) }

    static func eventsSetting() -> String? {
        guard let f = fopen("/proc/sys/net/netfilter/nf_conntrack_events", "r") else { return nil }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 16)
        guard fgets(&line, 16, f) != nil else { return nil }
        return String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self).trimmingWhitespace
    }

    /// The socket filter: accept a message whose CTA_TUPLE_ORIG / CTA_TUPLE_PROTO /
    /// CTA_PROTO_NUM is UDP and whose CTA_STATUS has IPS_DST_NAT; drop the rest. The kernel's
    /// netlink-attribute loads (SKF_AD_NLATTR, SKF_AD_NLATTR_NEST) find each attribute.
    static func attachFilter(_ fd: Int32) throws {
        let ld = UInt16(BPF_LD | BPF_W | BPF_ABS), ldImm = UInt16(BPF_LD | BPF_IMM), ldxImm = UInt16(BPF_LDX | BPF_IMM)
        let jeq = UInt16(BPF_JMP | BPF_JEQ | BPF_K), jset = UInt16(BPF_JMP | BPF_JSET | BPF_K)
        let tax = UInt16(BPF_MISC | BPF_TAX), ret = UInt16(BPF_RET | BPF_K)
        let nlattr = UInt32(bitPattern: SKF_AD_OFF + SKF_AD_NLATTR), nest = UInt32(bitPattern: SKF_AD_OFF + SKF_AD_NLATTR_NEST)
        let attrs = UInt32(MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size)
        func s(_ code: UInt16, _ k: UInt32) -> sock_filter { sock_filter(code: code, jt: 0, jf: 0, k: k) }
        // Jump offsets count from the next instruction; every failed check goes to `drop`.
        let drop = 21
        func toDrop(_ at: Int, ifNot k: UInt32 = 0, _ code: UInt16 = 0) -> sock_filter {
            k == 0
                ? sock_filter(code: jeq, jt: UInt8(drop - at - 1), jf: 0, k: 0)
                : sock_filter(code: code, jt: 0, jf: UInt8(drop - at - 1), k: k)
        }
        var program: [sock_filter] = [
            s(ldImm, attrs), s(ldxImm, UInt32(CTA_TUPLE_ORIG.rawValue)), s(ld, nlattr), toDrop(3),
            s(ldxImm, UInt32(CTA_TUPLE_PROTO.rawValue)), s(ld, nest), toDrop(6),
            s(ldxImm, UInt32(CTA_PROTO_NUM.rawValue)), s(ld, nest), toDrop(9),
            s(tax, 0), s(UInt16(BPF_LD | BPF_B | BPF_IND), 4), toDrop(12, ifNot: UInt32(IPPROTO_UDP), jeq),
            s(ldImm, attrs), s(ldxImm, UInt32(CTA_STATUS.rawValue)), s(ld, nlattr), toDrop(16),
            s(tax, 0), s(UInt16(BPF_LD | BPF_W | BPF_IND), 4), toDrop(19, ifNot: IPS_DST_NAT.rawValue, jset),
            s(ret, 0xffff_ffff),
            s(ret, 0)  // drop
        ]
        precondition(program.count == drop + 1)
        try program.withUnsafeMutableBufferPointer { p in
            var prog = sock_fprog(len: UInt16(p.count), filter: p.baseAddress)
            if setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, socklen_t(MemoryLayout<sock_fprog>.size)) < 0 {
                throw NetlinkError("attach the conntrack event filter", errno: Glibc.errno)
            }
        }
    }

    /// Takes in every queued event, without waiting.
    public func drain() {
        let fd = fileDescriptor
        while true {
            let got = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            if got < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                if e == ENOBUFS {
                    lose("conntrack events were lost (the receive buffer was full)")
                    continue
                }
                return  // EAGAIN: nothing more queued
            }
            take(UnsafeRawBufferPointer(rebasing: buffer[..<got]))
        }
    }

    private func take(_ datagram: UnsafeRawBufferPointer) {
        guard let base = datagram.baseAddress else { return }
        var remaining = Int32(clamping: datagram.count)
        var nlh: UnsafePointer<nlmsghdr>? = base.assumingMemoryBound(to: nlmsghdr.self)
        while let h = nlh, mnl_nlmsg_ok(h, remaining) {
            let type = Int32(h.pointee.nlmsg_type)
            events += 1
            if type >> 8 == NFNL_SUBSYS_CTNETLINK, let flow = Conntrack.flow(h) {
                if type & 0xff == Int32(IPCTNL_MSG_CT_DELETE.rawValue) { forget(flow) } else { add(flow) }
            }
            nlh = UnsafePointer(mnl_nlmsg_next(h, &remaining))
        }
    }

    /// Stops for good: leaves the event groups, so the kernel queues nothing more for it.
    private func giveUp(_ why: String) {
        lose(why)
        guard givenUp == nil else { return }
        givenUp = why
        for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
            var g = Int32(group.rawValue)
            _ = mnl_socket_setsockopt(raw, NETLINK_DROP_MEMBERSHIP, &g, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    private func lose(_ why: String) {
        if stale == nil {
            stale = why
            lastLoss = why
        }
        byEndpoint = [:]
        count = 0
    }

    static func key(_ f: Conntrack.Flow) -> Key {
        Key(src: f.original.src, dst: f.original.dst, sport: f.original.sport, dport: f.original.dport, zone: f.zone ?? 0)
    }

    static func endpoint(_ f: Conntrack.Flow) -> Endpoint { Endpoint(ip: f.reply.src, port: UInt16(bigEndian: f.reply.sport)) }

    func add(_ flow: Conntrack.Flow) {
        guard stale == nil, flow.original.proto == UInt8(IPPROTO_UDP), flow.destinationNATed else { return }
        if byEndpoint[Self.endpoint(flow), default: [:]].updateValue(flow, forKey: Self.key(flow)) == nil { count += 1 }
        if count > limit { giveUp("more than \(limit) DNATed UDP flows") }
    }

    func forget(_ flow: Conntrack.Flow) {
        let e = Self.endpoint(flow)
        guard let old = byEndpoint[e]?[Self.key(flow)], old.id == nil || flow.id == nil || old.id == flow.id else { return }
        byEndpoint[e]![Self.key(flow)] = nil
        if byEndpoint[e]!.isEmpty { byEndpoint[e] = nil }
        count -= 1
    }

    /// Starts again from what a dump returned (every DNATed UDP flow, as of the dump).
    func seed(_ flows: [Conntrack.Flow]) {
        guard givenUp == nil else { return }
        byEndpoint = [:]
        count = 0
        stale = nil
        seeds += 1
        for f in flows { add(f) }
    }

    /// The flows DNATed to this endpoint (its address and port, host order).
    func flows(to ip: IPAddress, port: UInt16) -> [Conntrack.Flow] {
        byEndpoint[Endpoint(ip: ip, port: port)].map { Array($0.values) } ?? []
    }
}

extension String {
    fileprivate var trimmingWhitespace: String {
        var s = Substring(self)
        while let c = s.last, c.isWhitespace { s.removeLast() }
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        return String(s)
    }
}
