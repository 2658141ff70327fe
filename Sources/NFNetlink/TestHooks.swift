#if SVCNAT_TEST_HOOKS
    import CNftables
    import Glibc

    /// Debug builds only (the SVCNAT_TEST_HOOKS build flag; release builds have none of this): a
    /// transport that makes the kernel refuse every batch, so kernel tests of the built binary can
    /// show that a refused batch changes nothing. It adds, right after BATCH_BEGIN and under its
    /// sequence number, the deletion of a chain that does not exist in the table of the batch's
    /// first object message. The kernel still reads every real change, then aborts the batch; the
    /// error comes first, so it is the one reported.
    final class RefusingTransport: NetlinkTransport {
        let inner: NetlinkTransport
        init(_ inner: NetlinkTransport) { self.inner = inner }
        var portID: UInt32 { inner.portID }

        func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int32) throws -> Int? {
            try inner.receive(into: buffer, timeout: timeout)
        }

        func send(_ datagram: UnsafeRawBufferPointer) throws {
            var offsets: [Int] = []
            var at = 0
            while at + MemoryLayout<nlmsghdr>.size <= datagram.count {
                offsets.append(at)
                let len = Int(datagram.loadUnaligned(fromByteOffset: at, as: nlmsghdr.self).nlmsg_len)
                guard len > 0 else { break }
                at += (len + 3) & ~3
            }
            func header(_ i: Int) -> nlmsghdr { datagram.loadUnaligned(fromByteOffset: offsets[i], as: nlmsghdr.self) }
            guard offsets.count >= 3, header(0).nlmsg_type == UInt16(NFNL_MSG_BATCH_BEGIN) else { return try inner.send(datagram) }
            // The first object message: its family, and its table (attribute 1 in every nftables object).
            let first = datagram.baseAddress! + offsets[1]
            let family = UInt16(first.load(fromByteOffset: MemoryLayout<nlmsghdr>.size, as: UInt8.self))
            let attr = first + MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size
            let attrLen = Int(attr.loadUnaligned(as: UInt16.self))
            let table = String(cString: (attr + 4).assumingMemoryBound(to: CChar.self))
            guard attrLen > 4 else { return try inner.send(datagram) }

            let bad = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
            defer { bad.deallocate() }
            let nlh = nftnl_nlmsg_build_hdr(
                bad.assumingMemoryBound(to: CChar.self), KernelNumbers.msg(NFT_MSG_DELCHAIN), family, 0, header(0).nlmsg_seq)!
            let chain = NftChain()
            nftnl_chain_set_str(chain.raw, KernelNumbers.attr(NFTNL_CHAIN_TABLE.rawValue), table)
            nftnl_chain_set_str(chain.raw, KernelNumbers.attr(NFTNL_CHAIN_NAME.rawValue), "svcnat-test-missing-chain")
            nftnl_chain_nlmsg_build_payload(nlh, chain.raw)
            var out = [UInt8](UnsafeRawBufferPointer(rebasing: datagram[..<offsets[1]]))
            out += UnsafeRawBufferPointer(start: bad, count: (Int(nlh.pointee.nlmsg_len) + 3) & ~3)
            out += UnsafeRawBufferPointer(rebasing: datagram[offsets[1]...])
            try out.withUnsafeBytes { try inner.send($0) }
        }
    }

    /// Debug builds only: a transport under which the kernel refuses every object message that
    /// contains `needle` (a Service's name, say), as it would refuse a Service it cannot take.
    /// The message's family becomes one no table has, so the kernel answers ENOENT under the
    /// message's own sequence number and changes nothing.
    final class PoisoningTransport: NetlinkTransport {
        let inner: NetlinkTransport
        let needle: [UInt8]
        init(_ inner: NetlinkTransport, needle: String) {
            self.inner = inner
            self.needle = Array(needle.utf8)
        }
        var portID: UInt32 { inner.portID }

        func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int32) throws -> Int? {
            try inner.receive(into: buffer, timeout: timeout)
        }

        func send(_ datagram: UnsafeRawBufferPointer) throws {
            var bytes = [UInt8](datagram)
            var at = 0
            while at + MemoryLayout<nlmsghdr>.size + MemoryLayout<nfgenmsg>.size <= bytes.count {
                let len = Int(datagram.loadUnaligned(fromByteOffset: at, as: nlmsghdr.self).nlmsg_len)
                guard len > 0, at + len <= bytes.count else { break }
                let type = datagram.loadUnaligned(fromByteOffset: at, as: nlmsghdr.self).nlmsg_type
                if type >> 8 == UInt16(NFNL_SUBSYS_NFTABLES), Self.contains(bytes[at..<(at + len)], needle) {
                    bytes[at + MemoryLayout<nlmsghdr>.size] = 0xfe
                }
                at += (len + 3) & ~3
            }
            try bytes.withUnsafeBytes { try inner.send($0) }
        }

        static func contains(_ hay: ArraySlice<UInt8>, _ needle: [UInt8]) -> Bool {
            guard !needle.isEmpty, hay.count >= needle.count else { return false }
            var i = hay.startIndex
            while i <= hay.endIndex - needle.count {
                if hay[i] == needle[0] && hay[i..<(i + needle.count)].elementsEqual(needle) { return true }
                i += 1
            }
            return false
        }
    }

    /// Debug builds only: a transport that runs a shell command before svcnat's first batch
    /// (`before`: another writer between svcnat's read and its commit) and before every later
    /// batch of the process (`between`: a look at the kernel after batch 1 committed and
    /// before batch 2 is sent). Each waits for its command to finish.
    final class CommandHookTransport: NetlinkTransport {
        let inner: NetlinkTransport
        let before: String?, between: String?
        private var batches = 0
        init(_ inner: NetlinkTransport, before: String?, between: String?) {
            self.inner = inner
            self.before = before
            self.between = between
        }
        var portID: UInt32 { inner.portID }

        func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int32) throws -> Int? {
            try inner.receive(into: buffer, timeout: timeout)
        }

        func send(_ datagram: UnsafeRawBufferPointer) throws {
            if datagram.count >= MemoryLayout<nlmsghdr>.size,
                datagram.loadUnaligned(as: nlmsghdr.self).nlmsg_type == UInt16(NFNL_MSG_BATCH_BEGIN)
            {
                if let command = batches == 0 ? before : between { _ = system(command) }
                batches += 1
            }
            try inner.send(datagram)
        }
    }

    extension NFTables {
        /// The kernel of this namespace, or, when the test harness sets SVCNAT_TEST_REFUSE_BATCHES,
        /// one that refuses every batch, or with SVCNAT_TEST_REFUSE_CONTAINING=TEXT one that refuses
        /// the messages holding TEXT, or with SVCNAT_TEST_BEFORE_FIRST_BATCH / _BEFORE_LATER_BATCHES
        /// one that runs a command before batches (debug builds only).
        static func defaultTransport() throws -> NetlinkTransport {
            let socket = try NetlinkSocket()
            if getenv("SVCNAT_TEST_REFUSE_BATCHES") != nil { return RefusingTransport(socket) }
            if let needle = getenv("SVCNAT_TEST_REFUSE_CONTAINING") { return PoisoningTransport(socket, needle: String(cString: needle)) }
            let before = getenv("SVCNAT_TEST_BEFORE_FIRST_BATCH").map { String(cString: $0) }
            let between = getenv("SVCNAT_TEST_BEFORE_LATER_BATCHES").map { String(cString: $0) }
            if before != nil || between != nil { return CommandHookTransport(socket, before: before, between: between) }
            return socket
        }
    }
#else
    extension NFTables {
        static func defaultTransport() throws -> NetlinkTransport { try NetlinkSocket() }
    }
#endif
