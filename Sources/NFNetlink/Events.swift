import CNftables
import Glibc
import NFTModel

/// One nftables change notification, as the kernel multicasts it to NFNLGRP_NFTABLES after a
/// commit: a message per changed object, then one for the commit itself.
public enum ChangeEvent: Equatable, Sendable {
    /// The kind of object a change notification is about.
    public enum Kind: Sendable, Equatable { case table, chain, rule, set, element, object, flowtable, other }

    /// An object of `table` (in `family`; nil for families svcnat never uses) was added or
    /// deleted by the socket `portID`.
    case change(kind: Kind, family: TableFamily?, table: String, portID: UInt32)
    /// A commit made `generation`: every change message of that commit came before this one.
    /// `process` is the committing program and its pid, as the kernel names them.
    case commit(generation: UInt32, portID: UInt32, process: String)

    /// The events in one datagram read from the group. Messages of other subsystems, and
    /// malformed ones, are skipped.
    static func parse(_ datagram: UnsafeRawBufferPointer) -> [ChangeEvent] {
        guard let base = datagram.baseAddress else { return [] }
        var out: [ChangeEvent] = []
        var remaining = Int32(clamping: datagram.count)
        var nlh: UnsafePointer<nlmsghdr>? = base.assumingMemoryBound(to: nlmsghdr.self)
        while let h = nlh, mnl_nlmsg_ok(h, remaining) {
            if let e = parse(message: h) { out.append(e) }
            nlh = UnsafePointer(mnl_nlmsg_next(h, &remaining))
        }
        return out
    }

    private static func parse(message h: UnsafePointer<nlmsghdr>) -> ChangeEvent? {
        let type = h.pointee.nlmsg_type
        guard type >> 8 == UInt16(NFNL_SUBSYS_NFTABLES),
            Int(h.pointee.nlmsg_len) >= MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size
        else { return nil }
        let msg = UInt32(type & 0xff)
        let family = UnsafeRawPointer(mnl_nlmsg_get_payload(h)).load(as: UInt8.self)
        // Every nftables object's attribute 1 is its table's name; a commit's are its id (1),
        // the committer's pid (2) and its name (3).
        var strings: [UInt16: String] = [:]
        var words: [UInt16: UInt32] = [:]
        let tail = UnsafeRawPointer(mnl_nlmsg_get_payload_tail(h))!
        var attr: UnsafePointer<nlattr>? = UnsafeRawPointer(mnl_nlmsg_get_payload_offset(h, MemoryLayout<nfgenmsg>.size))
            .assumingMemoryBound(to: nlattr.self)
        while let a = attr, mnl_attr_ok(a, Int32(tail - UnsafeRawPointer(a))) {
            let t = mnl_attr_get_type(a)
            let len = Int(mnl_attr_get_payload_len(a))
            if t <= 3, len > 0 {
                let p = UnsafeRawPointer(mnl_attr_get_payload(a))!
                if len == 4 { words[t] = UInt32(bigEndian: p.loadUnaligned(as: UInt32.self)) }
                let bytes = UnsafeRawBufferPointer(start: p, count: len)
                strings[t] = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            attr = UnsafePointer(mnl_attr_next(a))
        }
        if msg == NFT_MSG_NEWGEN.rawValue {
            guard let id = words[1] else { return nil }
            let pid = words[2].map { " (pid \($0))" } ?? ""
            return .commit(generation: id, portID: h.pointee.nlmsg_pid, process: (strings[3] ?? "unknown") + pid)
        }
        guard let table = strings[1] else { return nil }
        let kind: Kind =
            switch msg {
            case NFT_MSG_NEWTABLE.rawValue, NFT_MSG_DELTABLE.rawValue: .table
            case NFT_MSG_NEWCHAIN.rawValue, NFT_MSG_DELCHAIN.rawValue: .chain
            case NFT_MSG_NEWRULE.rawValue, NFT_MSG_DELRULE.rawValue: .rule
            case NFT_MSG_NEWSET.rawValue, NFT_MSG_DELSET.rawValue: .set
            case NFT_MSG_NEWSETELEM.rawValue, NFT_MSG_DELSETELEM.rawValue: .element
            case NFT_MSG_NEWOBJ.rawValue, NFT_MSG_DELOBJ.rawValue: .object
            case NFT_MSG_NEWFLOWTABLE.rawValue, NFT_MSG_DELFLOWTABLE.rawValue: .flowtable
            default: .other
            }
        let tableFamily: TableFamily? =
            switch Int(family) {
            case Int(NFPROTO_IPV4): .ip
            case Int(NFPROTO_IPV6): .ip6
            default: nil
            }
        return .change(kind: kind, family: tableFamily, table: table, portID: h.pointee.nlmsg_pid)
    }
}

/// A socket that listens to the nftables change group: every commit by anyone in this network
/// namespace arrives as events, so svcnat learns of another writer's change to its tables at
/// once, and ignores the commits that do not touch them.
///
/// The kernel drops notifications a full receive buffer cannot take and says so (ENOBUFS);
/// `read` reports that as `lost`, and the caller must then assume anything changed.
public final class ChangeEvents {
    private let raw: OpaquePointer
    private let buffer: UnsafeMutableRawBufferPointer
    private var listening = false

    public init() throws {
        guard let raw = mnl_socket_open(NETLINK_NETFILTER) else { throw NetlinkError("open netlink event socket", errno: Glibc.errno) }
        self.raw = raw
        if mnl_socket_bind(raw, 0, pid_t(MNL_SOCKET_AUTOPID)) < 0 {
            let e = Glibc.errno
            mnl_socket_close(raw)
            throw NetlinkError("bind netlink event socket", errno: e)
        }
        buffer = .allocate(byteCount: 1 << 16, alignment: 8)
        // Room for a burst of another writer's changes (16 MB, past rmem_max with CAP_NET_ADMIN).
        var size: Int32 = 16 << 20
        let fd = mnl_socket_get_fd(raw)
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        // Fully initialized: on a throw, deinit frees the socket and the buffer.
        try listen(true)
    }

    deinit {
        buffer.deallocate()
        mnl_socket_close(raw)
    }

    /// For a readiness source: readable when events are queued.
    public var fileDescriptor: Int32 { mnl_socket_get_fd(raw) }

    /// Joins or leaves the group. svcnat leaves it while its own batch commits, so the kernel
    /// neither builds nor queues a notification per element of svcnat's own change.
    public func listen(_ on: Bool) throws {
        guard on != listening else { return }
        var group = Int32(NFNLGRP_NFTABLES.rawValue)
        let option = on ? NETLINK_ADD_MEMBERSHIP : NETLINK_DROP_MEMBERSHIP
        if mnl_socket_setsockopt(raw, option, &group, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            throw NetlinkError(on ? "join the nftables event group" : "leave the nftables event group", errno: Glibc.errno)
        }
        listening = on
    }

    /// Reads every queued event, waiting up to `timeout` milliseconds for the first one. `lost`
    /// is set when the kernel dropped events since the last read.
    public func read(timeout: Int32) throws -> (events: [ChangeEvent], lost: Bool) {
        var events: [ChangeEvent] = []
        var lost = false
        var wait = timeout
        let fd = fileDescriptor
        while true {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            var n: Int32
            repeat { n = poll(&pfd, 1, wait) } while n < 0 && Glibc.errno == EINTR
            if n == 0 { break }
            try NetlinkError.check("poll netlink event socket", Int(n))
            let got = recv(fd, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            if got < 0 {
                let e = Glibc.errno
                if e == EINTR || e == EAGAIN { continue }
                if e == ENOBUFS { lost = true; continue }
                throw NetlinkError("receive from netlink event socket", errno: e)
            }
            events += ChangeEvent.parse(UnsafeRawBufferPointer(rebasing: buffer[..<got]))
            wait = 0
        }
        return (events, lost)
    }
}
