import CNftables
import Glibc

/// The byte-level seam under svcnat's netlink code: one datagram out, one datagram in. The
/// real one is a netfilter netlink socket (`NetlinkSocket`); tests put a recording double here
/// to check the exact bytes svcnat sends and to feed it captured kernel replies, without root.
public protocol NetlinkTransport: AnyObject {
    /// Sends one datagram (a batch, or one request). Throws `NetlinkError` with the errno.
    func send(_ datagram: UnsafeRawBufferPointer) throws
    /// Waits up to `timeout` milliseconds for one datagram, copies it into `buffer` and returns
    /// its length; nil when nothing came in time.
    func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int32) throws -> Int?
    /// The socket's netlink port id: the kernel stamps it on the change events of this socket's
    /// commits. 0 when there is no socket (a test double).
    var portID: UInt32 { get }
}

extension NetlinkTransport {
    public var portID: UInt32 { 0 }
}

/// A netfilter netlink socket. The corresponding libmnl calls are `mnl_socket_open`,
/// `mnl_socket_bind`, `mnl_socket_sendto` and `mnl_socket_recvfrom`.
public final class NetlinkSocket: NetlinkTransport {
    let raw: OpaquePointer

    public init() throws {
        guard let raw = mnl_socket_open(NETLINK_NETFILTER) else {
            throw NetlinkError("open netlink socket", errno: Glibc.errno)
        }
        self.raw = raw
        if mnl_socket_bind(raw, 0, pid_t(MNL_SOCKET_AUTOPID)) < 0 {
            let e = Glibc.errno
            mnl_socket_close(raw)
            throw NetlinkError("bind netlink socket", errno: e)
        }
        var one: Int32 = 1
        // Errors without the echoed request; we match them by sequence number instead.
        _ = setsockopt(fd, Int32(SOL_NETLINK), NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        // Errors with the offset of the refused attribute and the kernel's message, as nft asks.
        _ = setsockopt(fd, Int32(SOL_NETLINK), NETLINK_EXT_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        setBuffer(SO_RCVBUFFORCE, SO_RCVBUF, bytes: Self.receiveBufferFloor)
    }

    deinit { mnl_socket_close(raw) }

    var fd: Int32 { mnl_socket_get_fd(raw) }
    public var portID: UInt32 { mnl_socket_get_portid(raw) }

    /// Raises a socket buffer; the FORCE variant works past rmem_max/wmem_max with CAP_NET_ADMIN.
    func setBuffer(_ force: Int32, _ plain: Int32, bytes: Int) {
        var size = Int32(clamping: bytes)
        if setsockopt(fd, SOL_SOCKET, force, &size, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            _ = setsockopt(fd, SOL_SOCKET, plain, &size, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// The receive buffer's size at least; a batch of many messages gets room for an error
    /// for each (`send`), as nft sizes it to its command count.
    static let receiveBufferFloor = 8 << 20
    /// Kernel memory one queued error costs, about (its skb's truesize).
    static let bytesPerError = 1024
    private var receiveBufferBytes = NetlinkSocket.receiveBufferFloor

    public func send(_ datagram: UnsafeRawBufferPointer) throws {
        if datagram.count > 200_000 { setBuffer(SO_SNDBUFFORCE, SO_SNDBUF, bytes: datagram.count + 4096) }
        let messages = Self.messageCount(datagram)
        let wanted = min(max(Self.receiveBufferFloor, messages * Self.bytesPerError), 1 << 30)
        if wanted > receiveBufferBytes {
            setBuffer(SO_RCVBUFFORCE, SO_RCVBUF, bytes: wanted)
            receiveBufferBytes = wanted
        }
        try NetlinkError.check("send to netlink socket", mnl_socket_sendto(raw, datagram.baseAddress, datagram.count))
    }

    /// The netlink messages laid end to end in a datagram.
    static func messageCount(_ datagram: UnsafeRawBufferPointer) -> Int {
        var at = 0, n = 0
        while at + MemoryLayout<nlmsghdr>.size <= datagram.count {
            let len = Int(datagram.loadUnaligned(fromByteOffset: at, as: nlmsghdr.self).nlmsg_len)
            guard len >= MemoryLayout<nlmsghdr>.size else { break }
            n += 1
            at += (len + 3) & ~3
        }
        return n
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int32) throws -> Int? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var n: Int32
        repeat { n = poll(&pfd, 1, timeout) } while n < 0 && Glibc.errno == EINTR
        if n == 0 { return nil }
        try NetlinkError.check("poll netlink socket", Int(n))
        var got: Int
        repeat { got = mnl_socket_recvfrom(raw, buffer.baseAddress, buffer.count) } while got < 0 && Glibc.errno == EINTR
        return try NetlinkError.check("receive from netlink socket", got)
    }
}

/// A transport and its receive buffer, with the message-level calls NFTables and Conntrack use:
/// send a request or batch, walk the messages of each datagram that comes back.
final class NetlinkChannel {
    let transport: NetlinkTransport
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    static let receiveSize = 1 << 20

    init(_ transport: NetlinkTransport) {
        self.transport = transport
        receiveBuffer = .allocate(byteCount: Self.receiveSize, alignment: 8)
    }

    deinit { receiveBuffer.deallocate() }

    func send(_ buffer: UnsafeRawBufferPointer, what: @autoclosure () -> String) throws {
        do { try transport.send(buffer) } catch let e as NetlinkError { throw NetlinkError(what(), errno: e.errno) }
    }

    /// Receives one datagram (possibly many messages) and calls `each` for every message in it.
    /// Gives up after `timeout` milliseconds of silence.
    func receive(timeout: Int32 = 30_000, _ each: (UnsafePointer<nlmsghdr>) throws -> Void) throws {
        guard let len = try transport.receive(into: receiveBuffer, timeout: timeout) else {
            throw NetlinkError("wait for the kernel's answer", errno: ETIMEDOUT)
        }
        var remaining = Int32(len)
        var nlh: UnsafePointer<nlmsghdr>? = UnsafePointer(receiveBuffer.baseAddress!.assumingMemoryBound(to: nlmsghdr.self))
        while let h = nlh, mnl_nlmsg_ok(h, remaining) {
            try each(h)
            nlh = UnsafePointer(mnl_nlmsg_next(h, &remaining))
        }
    }

    /// Reads what is still queued, without waiting, and hands each message to `each` (by
    /// default: drops it).
    func drain(_ each: (UnsafePointer<nlmsghdr>) -> Void = { _ in }) {
        while true {
            do { try receive(timeout: 0, each) } catch { return }
        }
    }
}

extension UnsafePointer where Pointee == nlmsghdr {
    /// The errno of an NLMSG_ERROR message (0 for an ack) and the sequence number it answers.
    /// A truncated error message is reported as EPROTO rather than read past its end.
    var errorPayload: (errno: Int32, seq: UInt32) {
        guard Int(pointee.nlmsg_len) >= Int(mnl_nlmsg_size(MemoryLayout<nlmsgerr>.size)) else { return (EPROTO, pointee.nlmsg_seq) }
        let err = UnsafeRawPointer(mnl_nlmsg_get_payload(self)).loadUnaligned(as: nlmsgerr.self)
        return (-err.error, err.msg.nlmsg_seq)
    }

    /// The errno a dump's NLMSG_DONE carries when the dump ended in an error; nil for a
    /// dump that completed.
    var doneError: Int32? {
        guard Int(pointee.nlmsg_len) >= MemoryLayout<nlmsghdr>.size + 4 else { return nil }
        let code = UnsafeRawPointer(self).loadUnaligned(fromByteOffset: MemoryLayout<nlmsghdr>.size, as: Int32.self)
        return code < 0 ? -code : nil
    }

    /// An error's extended-ack attributes (NETLINK_EXT_ACK): the kernel's message, and the
    /// offset of the refused attribute in the refused message. With NETLINK_CAP_ACK the
    /// request is not echoed, so they follow the nlmsgerr header.
    var extendedAck: (message: String?, offset: Int?) {
        guard Int32(pointee.nlmsg_flags) & NLM_F_ACK_TLVS != 0 else { return (nil, nil) }
        let total = Int(pointee.nlmsg_len)
        let raw = UnsafeRawPointer(self)
        var at = Int(mnl_nlmsg_size(MemoryLayout<nlmsgerr>.size))
        if Int32(pointee.nlmsg_flags) & NLM_F_CAPPED == 0 {
            // The whole request was echoed after the header: skip it.
            let echoed = Int(raw.loadUnaligned(fromByteOffset: at - MemoryLayout<nlmsghdr>.size, as: nlmsghdr.self).nlmsg_len)
            at += max(0, echoed - MemoryLayout<nlmsghdr>.size)
        }
        var message: String?, offset: Int?
        while at + 4 <= total {
            let len = Int(raw.loadUnaligned(fromByteOffset: at, as: UInt16.self))
            let type = Int32(raw.loadUnaligned(fromByteOffset: at + 2, as: UInt16.self)) & Int32(NLA_TYPE_MASK_VALUE)
            guard len >= 4, at + len <= total else { break }
            let payload = UnsafeRawBufferPointer(start: raw + at + 4, count: len - 4)
            if type == Int32(NLMSGERR_ATTR_MSG.rawValue) {
                message = String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
            } else if type == Int32(NLMSGERR_ATTR_OFFS.rawValue), payload.count >= 4 {
                offset = Int(payload.loadUnaligned(as: UInt32.self))
            }
            at += (len + 3) & ~3
        }
        return (message, offset)
    }
}

/// An attribute's type without its nested and byte-order flags (the C header's NLA_TYPE_MASK,
/// which Swift does not import).
let NLA_TYPE_MASK_VALUE = ~(Int32(NLA_F_NESTED) | Int32(NLA_F_NET_BYTEORDER)) & 0xffff
