import CNftables
import Glibc
@testable import NFNetlink
import NFTModel
import SvcnatCore
import SvcnatModel
import Testing

/// A transport that records what NFTables sends and answers as the kernel would: an ack for the
/// batch's last message, or, when told, an error for one message of the batch.
final class RecordingTransport: NetlinkTransport {
    var sent: [[UInt8]] = []
    var replies: [[UInt8]] = []
    /// Refuse the batch's n-th object message (0-based) with this errno.
    var refuse: (index: Int, errno: Int32)?
    /// Refuse only in the batch sent n-th (0-based); nil: in every batch.
    var refuseInSend: Int?
    /// With `refuse`: the refused message is an element message, and the error's extended ack
    /// points at its element number n (0-based), with a message, as the kernel's does.
    var refuseElement: Int?

    func send(_ datagram: UnsafeRawBufferPointer) throws {
        let bytes = [UInt8](datagram)
        sent.append(bytes)
        let seqs = Self.headers(bytes).map(\.nlmsg_seq)
        guard seqs.count >= 3 else { return }
        let objects = Array(seqs.dropFirst().dropLast())
        if let r = refuse, refuseInSend.map({ $0 == sent.count - 1 }) ?? true {
            var reply = Self.error(seq: objects[r.index], errno: r.errno)
            if let k = refuseElement, let offset = Self.elementOffset(bytes, message: r.index + 1, element: k) {
                reply = Self.withExtendedAck(reply, offset: offset, message: "element \(k)")
            }
            replies.append(reply)
        }
        replies.append(Self.error(seq: objects.last!, errno: 0))
    }

    /// The next receive fails with ENOBUFS, and the closing ack is lost with it: a receive
    /// buffer that overflowed.
    var overflow = false

    func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int32) throws -> Int? {
        if overflow {
            overflow = false
            replies.removeLast()
            throw NetlinkError("receive from netlink socket", errno: ENOBUFS)
        }
        guard !replies.isEmpty else { return nil }
        let r = replies.removeFirst()
        buffer.copyMemory(from: UnsafeRawBufferPointer(start: r, count: r.count))
        return r.count
    }

    static func headers(_ bytes: [UInt8]) -> [nlmsghdr] {
        var out: [nlmsghdr] = []
        var at = 0
        bytes.withUnsafeBytes { b in
            while at + 16 <= b.count {
                let h = b.loadUnaligned(fromByteOffset: at, as: nlmsghdr.self)
                out.append(h)
                at += (Int(h.nlmsg_len) + 3) & ~3
            }
        }
        return out
    }

    /// Where element `element` of the element message `message` (its index in the datagram)
    /// starts, counted from that message's header: header 16, nfgenmsg 4, then attributes; the
    /// element list is attribute 3, a nest of one nest per element.
    static func elementOffset(_ bytes: [UInt8], message: Int, element: Int) -> Int? {
        var start = 0
        for h in headers(bytes).prefix(message) { start += (Int(h.nlmsg_len) + 3) & ~3 }
        let u16 = { (at: Int) in Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        var at = start + 20
        let end = start + Int(headers(bytes)[message].nlmsg_len)
        while at + 4 <= end {
            let len = u16(at), type = u16(at + 2) & 0x3fff
            if type == 3 {
                var e = at + 4
                for _ in 0..<element { e += (u16(e) + 3) & ~3 }
                return e - start
            }
            at += (len + 3) & ~3
        }
        return nil
    }

    /// The error with extended-ack attributes appended (NLM_F_ACK_TLVS): a message string (1)
    /// and the offset (2).
    static func withExtendedAck(_ error: [UInt8], offset: Int, message: String) -> [UInt8] {
        func attr(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] {
            let len = UInt16(4 + payload.count)
            var a = withUnsafeBytes(of: len) { Array($0) } + withUnsafeBytes(of: type) { Array($0) } + payload
            while a.count % 4 != 0 { a.append(0) }
            return a
        }
        var out = error + attr(1, Array(message.utf8) + [0]) + attr(2, withUnsafeBytes(of: UInt32(offset)) { Array($0) })
        withUnsafeBytes(of: UInt32(out.count)) { out.replaceSubrange(0..<4, with: $0) }
        let flags = UInt16(NLM_F_CAPPED | NLM_F_ACK_TLVS)
        withUnsafeBytes(of: flags) { out.replaceSubrange(6..<8, with: $0) }
        return out
    }

    /// An NLMSG_ERROR answering `seq` (errno 0: an ack), without the echoed request (CAP_ACK).
    static func error(seq: UInt32, errno: Int32) -> [UInt8] {
        var h = nlmsghdr(
            nlmsg_len: UInt32(16 + MemoryLayout<nlmsgerr>.size), nlmsg_type: UInt16(NLMSG_ERROR),
            nlmsg_flags: UInt16(NLM_F_CAPPED), nlmsg_seq: seq, nlmsg_pid: 0)
        var e = nlmsgerr()
        e.error = -errno
        e.msg.nlmsg_seq = seq
        return withUnsafeBytes(of: &h) { Array($0) } + withUnsafeBytes(of: &e) { Array($0) }
    }
}

@Suite struct NFTablesOverATransport {
    let tx = Transaction(
        family: .ip, table: "svcnat",
        operations: [
            .addTable(comment: nil), .addChain(Chain(name: "services")),
            .addSet(NamedSet(name: "cluster-ips", key: [.ipv4Addr], data: .none)),
            .addElements(set: "cluster-ips", [SetElement(key: [.ip(IPAddress("198.18.100.10")!)])])
        ])

    @Test func theBatchIsBeginObjectsEndAndTheAckForTheLastClosesIt() throws {
        let t = RecordingTransport()
        let nft = NFTables(transport: t, firstSeq: 100)
        try nft.apply(tx)
        #expect(t.sent.count == 1)
        let types = RecordingTransport.headers(t.sent[0]).map { Int32($0.nlmsg_type) }
        let msg = { (m: nf_tables_msg_types) in Int32(NFNL_SUBSYS_NFTABLES << 8) | Int32(m.rawValue) }
        #expect(
            types == [
                Int32(NFNL_MSG_BATCH_BEGIN), msg(NFT_MSG_NEWTABLE), msg(NFT_MSG_NEWCHAIN), msg(NFT_MSG_NEWSET),
                msg(NFT_MSG_NEWSETELEM), Int32(NFNL_MSG_BATCH_END)
            ])
        let flags = RecordingTransport.headers(t.sent[0]).map { Int32($0.nlmsg_flags) & NLM_F_ACK }
        #expect(flags == [0, 0, 0, 0, NLM_F_ACK, 0], "only the last object message asks for an ack")
        #expect(nft.lastBatchMessages == 4)
    }

    @Test func aRefusedMessageIsNamedBySequenceNumber() throws {
        let t = RecordingTransport()
        t.refuse = (index: 2, errno: EINVAL)
        let nft = NFTables(transport: t, firstSeq: 7)
        do {
            try nft.apply(tx)
            Issue.record("the refusal was not reported")
        } catch let e as BatchError {
            #expect(e.failures.count == 1)
            #expect(e.failures[0].errno == EINVAL)
            #expect(e.failures[0].operation == "add set ip svcnat cluster-ips { type ipv4_addr; }")
        }
    }

    /// NETLINK_EXT_ACK was off, so a refused element message named its first element. The
    /// kernel's error offset now names the element it refused, and its message rides along.
    @Test func theKernelsErrorOffsetNamesTheRefusedElement() throws {
        let elements = (1...5).map { SetElement(key: [.ip(IPAddress("198.18.100.\($0)")!)]) }
        let tx = Transaction(family: .ip, table: "svcnat", operations: [.addElements(set: "cluster-ips", elements)])
        let t = RecordingTransport()
        t.refuse = (index: 0, errno: EEXIST)
        t.refuseElement = 3
        do {
            try NFTables(transport: t, firstSeq: 1).apply(tx)
            Issue.record("the refusal was not reported")
        } catch let e as BatchError {
            let failure = try #require(e.failures.first)
            #expect(failure.refused?.change == .addElements(set: "cluster-ips", [elements[3]]))
            #expect(failure.operation == "add element ip svcnat cluster-ips { 198.18.100.4 }")
            #expect(failure.description.contains("(kernel: element 3)"))
        }
    }

    /// The first ENOBUFS threw and the cause was lost. Now the rest is read, the errors that
    /// came are kept, and the loss is said, even when the closing ack is among the lost.
    @Test func anOverflowingReceiveBufferKeepsTheFirstErrors() throws {
        let t = RecordingTransport()
        t.refuse = (index: 1, errno: ENOENT)
        t.overflow = true
        do {
            try NFTables(transport: t, firstSeq: 1).apply(tx)
            Issue.record("the refusal was not reported")
        } catch let e as BatchError {
            #expect(e.failures.map(\.errno) == [ENOENT, ENOBUFS], "\(e)")
            #expect(e.failures[0].operation == "add chain ip svcnat services")
            #expect(e.description.contains("dropped some of its answers"))
        }
    }

    @Test func sequenceNumbersWrapInsteadOfTrapping() throws {
        let t = RecordingTransport()
        t.refuse = (index: 3, errno: ENOENT)
        let nft = NFTables(transport: t, firstSeq: UInt32.max - 2)
        do {
            try nft.apply(tx)
            Issue.record("the refusal was not reported")
        } catch let e as BatchError {
            #expect(e.failures.map(\.operation) == ["add element ip svcnat cluster-ips { 198.18.100.10 }"], "matched across the wrap")
        }
        let seqs = RecordingTransport.headers(t.sent[0]).map(\.nlmsg_seq)
        #expect(seqs == [UInt32.max - 1, UInt32.max, 0, 1, 2, 3])
        t.refuse = nil
        do { try nft.apply(tx) } catch let e as BatchError {
            Issue.record("a batch after the wrap: \(e)")
        }
    }

    @Test func aMissingKernelFeatureIsReadOffTheRefusedChangeNotItsText() throws {
        let fib = Rule([.fibDaddrLocal, .verdict(.accept)])
        let tx = Transaction(
            family: .ip, table: "svcnat", operations: [.addTable(comment: nil), .addChain(Chain(name: "c")), .addRule(chain: "c", fib)])
        let t = RecordingTransport()
        t.refuse = (index: 2, errno: EOPNOTSUPP)
        do {
            try NFTables(transport: t, firstSeq: 1).apply(tx)
            Issue.record("the refusal was not reported")
        } catch let e as BatchError {
            let failure = try #require(e.failures.first)
            #expect(failure.missingFeature == .fib)
            #expect(failure.refused?.change == .addRule(chain: "c", fib))
            #expect(failure.description.contains("nft_fib_ipv4"))
        }
        // The same words in a name are not the feature.
        let named = Transaction(family: .ip, table: "svcnat", operations: [.addChain(Chain(name: "fib numgen"))])
        t.refuse = (index: 0, errno: ENOENT)
        do { try NFTables(transport: t, firstSeq: 1).apply(named) } catch let e as BatchError {
            #expect(e.failures.first?.missingFeature == nil)
        }
    }

    /// A dump can end in an error: the errno rides in NLMSG_DONE. It was ignored, so a failed
    /// dump read as a complete one.
    @Test func aDumpThatEndsInAnErrorIsAnError() throws {
        final class FailingDump: NetlinkTransport {
            var reply: [UInt8] = []
            func send(_ datagram: UnsafeRawBufferPointer) throws {
                let seq = RecordingTransport.headers([UInt8](datagram))[0].nlmsg_seq
                var h = nlmsghdr(
                    nlmsg_len: 20, nlmsg_type: UInt16(NLMSG_DONE), nlmsg_flags: UInt16(NLM_F_MULTI), nlmsg_seq: seq, nlmsg_pid: 0)
                var code = -EIO
                reply = withUnsafeBytes(of: &h) { Array($0) } + withUnsafeBytes(of: &code) { Array($0) }
            }
            func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int32) throws -> Int? {
                guard !reply.isEmpty else { return nil }
                defer { reply = [] }
                buffer.copyMemory(from: UnsafeRawBufferPointer(start: reply, count: reply.count))
                return reply.count
            }
        }
        let nft = NFTables(transport: FailingDump(), firstSeq: 5)
        do {
            try nft.request(
                NFT_MSG_GETCHAIN, family: UInt16(NFPROTO_IPV4), flags: NLM_F_DUMP, what: "list chains", build: { _ in }, each: { _ in })
            Issue.record("the dump's error was ignored")
        } catch let e as NetlinkError {
            #expect(e.errno == EIO && e.operation == "list chains")
        }
    }

    /// Many refused messages gave error strings of 742 KB. The text now keeps the first few
    /// within 4 KB and counts the rest.
    @Test func errorTextIsCappedWithACountOfTheRest() {
        let one = NetlinkError("add element ip svcnat service-ips { " + String(repeating: "x", count: 300) + " }", errno: EEXIST)
        let e = BatchError(failures: Array(repeating: one, count: 5000))
        #expect(e.description.utf8.count < 4500)
        #expect(e.description.hasSuffix("more refused messages"))
        #expect(e.description.contains("; and 49"))
    }

    /// A second-batch failure said "nothing was changed" although the first batch had been
    /// committed. It now says which batch failed and that the ones before it were committed.
    @Test func aRefusedSecondBatchSaysTheFirstWasCommitted() throws {
        let t = RecordingTransport()
        t.refuse = (index: 0, errno: ENOENT)
        t.refuseInSend = 1
        let kernel = NetlinkKernel(NFTables(transport: t, firstSeq: 1))
        let gone = SetElement(key: [.integer(3)], data: [.ip(IPAddress("198.19.1.2")!), .port(8080)])
        let tx = Transaction(
            family: .ip, table: "svcnat", operations: [.flushChain("svc-demo/web/tcp/http"), .deleteElements(set: "endpoints-7", [gone])])
        do {
            try kernel.apply([tx])
            Issue.record("the refusal was not reported")
        } catch let e as BatchError {
            #expect(t.sent.count == 2)
            #expect(e.batch == 2 && e.batches == 2)
            #expect(e.description.hasPrefix("the kernel refused batch 2 of 2"), "\(e)")
            #expect(!e.description.contains("nothing was changed"))
        }
    }
}
