import CNftables
import Glibc

/// A netfilter netlink socket. The corresponding libmnl calls are `mnl_socket_open`,
/// `mnl_socket_bind`, `mnl_socket_sendto` and `mnl_socket_recvfrom`.
final class NetlinkSocket {
    let raw: OpaquePointer
    let portID: UInt32
    private var receiveBuffer: UnsafeMutableRawPointer
    static let receiveSize = 1 << 20

    init() throws {
        guard let raw = mnl_socket_open(NETLINK_NETFILTER) else {
            throw NetlinkError("open netlink socket", errno: Glibc.errno)
        }
        self.raw = raw
        receiveBuffer = .allocate(byteCount: Self.receiveSize, alignment: 8)
        if mnl_socket_bind(raw, 0, pid_t(MNL_SOCKET_AUTOPID)) < 0 {
            let e = Glibc.errno
            mnl_socket_close(raw)
            receiveBuffer.deallocate()
            throw NetlinkError("bind netlink socket", errno: e)
        }
        portID = mnl_socket_get_portid(raw)
        var one: Int32 = 1
        // Errors without the echoed request; we match them by sequence number instead.
        _ = setsockopt(fd, Int32(SOL_NETLINK), NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<Int32>.size))
        setBuffer(SO_RCVBUFFORCE, SO_RCVBUF, bytes: 8 << 20)
    }

    deinit {
        mnl_socket_close(raw)
        receiveBuffer.deallocate()
    }

    var fd: Int32 { mnl_socket_get_fd(raw) }

    /// Raises a socket buffer; the FORCE variant works past rmem_max/wmem_max with CAP_NET_ADMIN.
    func setBuffer(_ force: Int32, _ plain: Int32, bytes: Int) {
        var size = Int32(clamping: bytes)
        if setsockopt(fd, SOL_SOCKET, force, &size, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            _ = setsockopt(fd, SOL_SOCKET, plain, &size, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    func send(_ buffer: UnsafeRawBufferPointer, what: @autoclosure () -> String) throws {
        if buffer.count > 200_000 { setBuffer(SO_SNDBUFFORCE, SO_SNDBUF, bytes: buffer.count + 4096) }
        try NetlinkError.check(what(), mnl_socket_sendto(raw, buffer.baseAddress, buffer.count))
    }

    /// Receives one datagram (possibly many messages) and calls `each` for every message in it.
    /// Gives up after `timeout` milliseconds of silence.
    func receive(timeout: Int32 = 30_000, _ each: (UnsafePointer<nlmsghdr>) throws -> Void) throws {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var n: Int32
        repeat { n = poll(&pfd, 1, timeout) } while n < 0 && Glibc.errno == EINTR
        if n == 0 { throw NetlinkError("wait for the kernel's answer", errno: ETIMEDOUT) }
        try NetlinkError.check("poll netlink socket", Int(n))
        let len = try NetlinkError.check("receive from netlink socket",
                                         mnl_socket_recvfrom(raw, receiveBuffer, Self.receiveSize))
        var remaining = Int32(len)
        var nlh: UnsafePointer<nlmsghdr>? = UnsafePointer(receiveBuffer.assumingMemoryBound(to: nlmsghdr.self))
        while let h = nlh, mnl_nlmsg_ok(h, remaining) {
            try each(h)
            nlh = UnsafePointer(mnl_nlmsg_next(h, &remaining))
        }
    }

    /// Reads and drops anything still queued (e.g. acks after a failed batch).
    func drain() {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&pfd, 1, 0) > 0 {
            if mnl_socket_recvfrom(raw, receiveBuffer, Self.receiveSize) <= 0 { break }
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
}
