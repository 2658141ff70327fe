import CNftables
import Glibc
import NFTModel

/// svcnat's view of the kernel's nftables: read one table back as model values, and apply a
/// transaction as one atomic batch. Everything here runs in the caller's network namespace.
public final class NFTables {
    private let socket: NetlinkChannel
    private var seq: UInt32

    /// Netlink messages in the last `apply`'s batch, for logs and metrics.
    public private(set) var lastBatchMessages = 0

    /// Set elements per message. 1 costs a message per element, and makes a refusal name the
    /// one element the kernel refused (what a retry after a refused batch uses).
    public var elementsPerMessage = BatchEncoder.elementsPerMessage

    /// Talks to the kernel of this network namespace.
    public convenience init() throws { try self.init(transport: Self.defaultTransport(), firstSeq: UInt32(truncatingIfNeeded: time(nil))) }

    /// Talks through `transport` (tests: a recording double), numbering messages from `firstSeq`.
    public init(transport: NetlinkTransport, firstSeq: UInt32) {
        checkModelConstants()
        socket = NetlinkChannel(transport)
        seq = firstSeq
    }

    // MARK: applying

    /// Sends the transaction as one batch and waits for the kernel's verdict. On any refusal
    /// the kernel aborts the whole batch, and the error names each refused operation.
    public func apply(_ tx: Transaction) throws { try apply([tx]) }

    /// Sends several tables' transactions (svcnat's `ip` and `ip6` tables) as one batch: the
    /// kernel commits them together or not at all. With `generation`, only if the ruleset is
    /// still at that generation: otherwise the kernel changes nothing and this throws
    /// `GenerationChanged`.
    public func apply(_ transactions: [Transaction], generation: UInt32? = nil) throws {
        lastBatchMessages = 0
        let txs = transactions.filter { !$0.isEmpty }
        guard !txs.isEmpty else { return }
        let begin = nextSeq()
        var enc = BatchEncoder(firstSeq: begin, elementsPerMessage: elementsPerMessage, generation: generation)
        // Operation i of the batch is operation `owners[i].1` of transaction `owners[i].0`.
        var owners: [(Int, Int)] = []
        for (t, tx) in txs.enumerated() {
            enc.table = tx.table
            enc.family = KernelNumbers.family(tx.family)
            for (i, op) in tx.operations.enumerated() {
                enc.encode(op, index: owners.count)
                owners.append((t, i))
            }
        }
        let last = enc.lastSeq
        enc.requestAckForLastMessage()
        enc.end()
        seq = enc.lastSeq
        lastBatchMessages = Int(last &- begin)

        do { try socket.send(enc.buffer.bytes, what: "send the transaction (\(lastBatchMessages) netlink messages)") } catch var e
            as NetlinkError where e.errno == EMSGSIZE
        {
            e.operation +=
                " of \(enc.buffer.length) bytes: larger than this socket may send; raise net.core.wmem_max past it "
                + "(svcnat raises its own send buffer with CAP_NET_ADMIN, which a user namespace does not grant)"
            throw e
        }
        var failures: [NetlinkError] = []
        var done = false, staleGeneration = false
        func handle(_ nlh: UnsafePointer<nlmsghdr>) {
            guard nlh.pointee.nlmsg_type == UInt16(NLMSG_ERROR) else { return }
            let (err, s) = nlh.errorPayload
            if s == begin && err == ERESTART && generation != nil {
                // The compare-and-swap failed: the kernel read nothing past BATCH_BEGIN.
                staleGeneration = true
                done = true
            } else if s == begin {
                // The batch as a whole failed (commit refused, or out of memory).
                if err != 0 { failures.append(NetlinkError("commit the transaction", errno: err)) }
                done = true
            } else if s == last && err == 0 {
                done = true
            } else if err != 0 {
                let (kernelMessage, offset) = nlh.extendedAck
                if let (t, i) = enc.operationIndex(for: s).map({ owners[$0] }) {
                    // For elements, only those of the refused message, and of those the one
                    // the kernel's error offset points into.
                    var change = txs[t].operations[i]
                    if var r = enc.elements(for: s) {
                        if let offset, let k = enc.element(inMessage: s, atOffset: offset), r.lowerBound + k < r.upperBound {
                            r = (r.lowerBound + k)..<(r.lowerBound + k + 1)
                        }
                        switch change {
                        case .addElements(let set, let es) where r.upperBound <= es.count: change = .addElements(set: set, Array(es[r]))
                        case .deleteElements(let set, let es) where r.upperBound <= es.count:
                            change = .deleteElements(set: set, Array(es[r]))
                        default: break
                        }
                    }
                    var failure = NetlinkError(refused: change, in: txs[t], errno: err)
                    failure.kernelMessage = kernelMessage
                    failures.append(failure)
                } else {
                    var failure = NetlinkError("batch", errno: err)
                    failure.kernelMessage = kernelMessage
                    failures.append(failure)
                }
                if s == last { done = true }
            }
        }
        // A full receive buffer drops answers (ENOBUFS), the closing ack among them perhaps:
        // then what is still queued is read, the first errors kept, and the loss said.
        var overflowed = false
        while !done {
            do { try socket.receive(timeout: overflowed ? 1000 : 30_000, handle) } catch let e as NetlinkError where e.errno == ENOBUFS {
                overflowed = true
            } catch let e as NetlinkError where e.errno == ETIMEDOUT && overflowed {
                break
            }
        }
        // The kernel queues all of a batch's answers at once: an error behind the closing ack
        // (one for the batch as a whole, say) is read, not dropped.
        socket.drain(handle)
        if overflowed {
            failures.append(
                NetlinkError(
                    "the kernel dropped some of its answers to this batch (the receive buffer was full); the errors above came first",
                    errno: ENOBUFS))
        }
        if staleGeneration, let generation { throw GenerationChanged(expected: generation) }
        if !failures.isEmpty { throw BatchError(failures: failures) }
    }

    /// The port id the kernel stamps on this socket's commits.
    public var portID: UInt32 { socket.transport.portID }

    private func nextSeq() -> UInt32 {
        seq &+= 1
        return seq
    }

    // MARK: reading

    /// Reads svcnat's table back from the kernel; nil when it does not exist.
    ///
    /// A dump the kernel marks interrupted (a commit, by anyone, landed during it) is kept when
    /// the kernel walked only this table's objects for it (sets, elements, rules): another
    /// table's commit cannot shift it, and a commit to this table is the caller's to see (its
    /// change events, or the generation, before and after the read). The dumps the kernel walks
    /// over every table of the family (chains, objects, flowtables) are done again until one
    /// is whole.
    public func read(table: String, family: TableFamily = .ip) throws -> Ruleset? {
        let nfproto = KernelNumbers.family(family)
        guard let ipFamily = IPFamily(family) else { return nil }
        guard let (comment, tableFlags) = try tableInfo(table, nfproto) else { return nil }
        var r = Ruleset(family: family, table: table, comment: comment)
        r.flags = tableFlags
        func dump(
            _ type: nf_tables_msg_types, what: String,
            build: (UnsafeMutablePointer<nlmsghdr>) -> Void, each: (UnsafePointer<nlmsghdr>) throws -> Void
        ) throws {
            try request(type, family: nfproto, flags: NLM_F_DUMP, what: what, build: build, each: each)
        }
        /// A family-wide dump, again until the kernel says it is whole; `start` clears what an
        /// earlier try collected.
        func wholeDump(
            _ type: nf_tables_msg_types, what: String, start: () -> Void,
            build: (UnsafeMutablePointer<nlmsghdr>) -> Void, each: (UnsafePointer<nlmsghdr>) throws -> Void
        ) throws {
            for _ in 0..<Self.familyDumpTries {
                start()
                if try !request(type, family: nfproto, flags: NLM_F_DUMP, what: what, build: build, each: each) { return }
            }
            throw NetlinkError("\(what): the ruleset kept changing during the dump", errno: EINTR)
        }

        try wholeDump(NFT_MSG_GETCHAIN, what: "list chains", start: { r.chains = [] }) { _ in
        } each: { nlh in
            let c = NftChain()
            guard nftnl_chain_nlmsg_parse(nlh, c.raw) >= 0 else { return }
            guard str(nftnl_chain_get_str(c.raw, KernelNumbers.attr(NFTNL_CHAIN_TABLE.rawValue))) == table,
                nftnl_chain_get_u32(c.raw, KernelNumbers.attr(NFTNL_CHAIN_FAMILY.rawValue)) == UInt32(nfproto)
            else { return }
            let name = str(nftnl_chain_get_str(c.raw, KernelNumbers.attr(NFTNL_CHAIN_NAME.rawValue)))
            var base: BaseChain?
            if nftnl_chain_is_set(c.raw, KernelNumbers.attr(NFTNL_CHAIN_HOOKNUM.rawValue)),
                let hook = KernelNumbers.hook(nftnl_chain_get_u32(c.raw, KernelNumbers.attr(NFTNL_CHAIN_HOOKNUM.rawValue))),
                let type = ChainType(rawValue: str(nftnl_chain_get_str(c.raw, KernelNumbers.attr(NFTNL_CHAIN_TYPE.rawValue))))
            {
                let policy = nftnl_chain_get_u32(c.raw, KernelNumbers.attr(NFTNL_CHAIN_POLICY.rawValue))
                base = BaseChain(
                    type: type, hook: hook, priority: nftnl_chain_get_s32(c.raw, KernelNumbers.attr(NFTNL_CHAIN_PRIO.rawValue)),
                    policy: policy == UInt32(NF_DROP) ? .drop : .accept)
            }
            r.chains.append(Chain(name: name, base: base))
        }

        try dump(NFT_MSG_GETSET, what: "list sets of \(table)") { nlh in
            let s = NftSet()
            nftnl_set_set_str(s.raw, KernelNumbers.attr(NFTNL_SET_TABLE.rawValue), table)
            nftnl_set_nlmsg_build_payload(nlh, s.raw)
        } each: { nlh in
            let s = NftSet()
            guard nftnl_set_nlmsg_parse(nlh, s.raw) >= 0,
                str(nftnl_set_get_str(s.raw, KernelNumbers.attr(NFTNL_SET_TABLE.rawValue))) == table
            else { return }
            let name = str(nftnl_set_get_str(s.raw, KernelNumbers.attr(NFTNL_SET_NAME.rawValue)))
            let flags = nftnl_set_get_u32(s.raw, KernelNumbers.attr(NFTNL_SET_FLAGS.rawValue))
            // An anonymous set (`{ 80, 443 }` in someone's rule) belongs to its rule: the kernel
            // frees it with the rule, and it is not svcnat's to delete.
            if flags & NFT_SET_ANONYMOUS.rawValue != 0 { return }
            let isMap = flags & NFT_SET_MAP.rawValue != 0
            var key = Self.keyFields(nftnl_set_get_u32(s.raw, KernelNumbers.attr(NFTNL_SET_KEY_TYPE.rawValue)))
            var data = SetData.none
            if isMap {
                let dataType = nftnl_set_get_u32(s.raw, KernelNumbers.attr(NFTNL_SET_DATA_TYPE.rawValue))
                if dataType == NFT_DATA_VERDICT.rawValue {
                    data = .verdict
                } else {
                    let fields = Self.keyFields(dataType)
                    data = .values(fields)
                    if fields.isEmpty
                        || nftnl_set_get_u32(s.raw, KernelNumbers.attr(NFTNL_SET_DATA_LEN.rawValue))
                            != UInt32(NamedSet.fieldsLength(fields))
                    {
                        key = []
                    }
                }
            }
            var typeof: String?
            if nftnl_set_is_set(s.raw, KernelNumbers.attr(NFTNL_SET_USERDATA.rawValue)) {
                var len: UInt32 = 0
                if let p = nftnl_set_get_data(s.raw, KernelNumbers.attr(NFTNL_SET_USERDATA.rawValue), &len) {
                    typeof = SetTypeof.typeof(forUserData: Array(UnsafeRawBufferPointer(start: p, count: Int(len))))
                }
            }
            var timeout: UInt32?
            let dynamicFlags = NFT_SET_TIMEOUT.rawValue | NFT_SET_EVAL.rawValue
            if flags & dynamicFlags == dynamicFlags {
                timeout = UInt32(nftnl_set_get_u64(s.raw, KernelNumbers.attr(NFTNL_SET_TIMEOUT.rawValue)) / 1000)
            }
            let plain = flags & ~(NFT_SET_MAP.rawValue | (timeout != nil ? dynamicFlags : 0)) == 0
            if !plain || nftnl_set_get_u32(s.raw, KernelNumbers.attr(NFTNL_SET_KEY_LEN.rawValue)) != UInt32(NamedSet.fieldsLength(key)) {
                key = []  // not a set svcnat would make: its definition will not match
            }
            r.sets.append(NamedSet(name: name, key: key, data: data, typeof: typeof, timeout: timeout))
        }

        // The elements of dynamic sets belong to the traffic that filled them: not read.
        for i in r.sets.indices where !r.sets[i].key.isEmpty && !r.sets[i].isDynamic {
            let name = r.sets[i].name, fields = r.sets[i].key
            let dataFields: [KeyField]? = if case .values(let f) = r.sets[i].data { f } else { nil }
            var elements: [SetElement] = []
            try dump(NFT_MSG_GETSETELEM, what: "list elements of \(table) \(name)") { nlh in
                let s = NftSet()
                nftnl_set_set_str(s.raw, KernelNumbers.attr(NFTNL_SET_TABLE.rawValue), table)
                nftnl_set_set_str(s.raw, KernelNumbers.attr(NFTNL_SET_NAME.rawValue), name)
                nftnl_set_elems_nlmsg_build_payload(nlh, s.raw)
            } each: { nlh in
                let s = NftSet()
                guard nftnl_set_elems_nlmsg_parse(nlh, s.raw) >= 0 else { return }
                guard let it = nftnl_set_elems_iter_create(s.raw) else { return }
                defer { nftnl_set_elems_iter_destroy(it) }
                while let el = nftnl_set_elems_iter_next(it) {
                    if let e = Self.readElement(el, fields: fields, data: dataFields) { elements.append(e) }
                }
            }
            r.sets[i].elements = SetElement.sorted(elements)
        }

        // Objects svcnat never makes: their names, to delete them.
        try wholeDump(NFT_MSG_GETOBJ, what: "list objects of \(table)", start: { r.foreign = [] }) { nlh in
            let o = NftObject()
            nftnl_obj_set_str(o.raw, KernelNumbers.attr(NFTNL_OBJ_TABLE), table)
            nftnl_obj_nlmsg_build_payload(nlh, o.raw)
        } each: { nlh in
            let o = NftObject()
            guard nftnl_obj_nlmsg_parse(nlh, o.raw) >= 0,
                str(nftnl_obj_get_str(o.raw, KernelNumbers.attr(NFTNL_OBJ_TABLE))) == table
            else { return }
            let type = nftnl_obj_get_u32(o.raw, KernelNumbers.attr(NFTNL_OBJ_TYPE))
            r.foreign.append(
                ForeignObject(kind: .object(type: type), name: str(nftnl_obj_get_str(o.raw, KernelNumbers.attr(NFTNL_OBJ_NAME)))))
        }
        let objects = r.foreign
        try wholeDump(NFT_MSG_GETFLOWTABLE, what: "list flowtables of \(table)", start: { r.foreign = objects }) { _ in
        } each: { nlh in
            let f = NftFlowtable()
            guard nftnl_flowtable_nlmsg_parse(nlh, f.raw) >= 0,
                str(nftnl_flowtable_get_str(f.raw, KernelNumbers.attr(NFTNL_FLOWTABLE_TABLE.rawValue))) == table
            else { return }
            r.foreign.append(
                ForeignObject(
                    kind: .flowtable, name: str(nftnl_flowtable_get_str(f.raw, KernelNumbers.attr(NFTNL_FLOWTABLE_NAME.rawValue)))))
        }

        var rulesByChain: [String: [Rule]] = [:]
        try dump(NFT_MSG_GETRULE, what: "list rules of \(table)") { nlh in
            let rule = NftRule()
            nftnl_rule_set_str(rule.raw, KernelNumbers.attr(NFTNL_RULE_TABLE.rawValue), table)
            nftnl_rule_nlmsg_build_payload(nlh, rule.raw)
        } each: { nlh in
            let rule = NftRule()
            guard nftnl_rule_nlmsg_parse(nlh, rule.raw) >= 0,
                str(nftnl_rule_get_str(rule.raw, KernelNumbers.attr(NFTNL_RULE_TABLE.rawValue))) == table
            else { return }
            let chain = str(nftnl_rule_get_str(rule.raw, KernelNumbers.attr(NFTNL_RULE_CHAIN.rawValue)))
            var exprs: [Expr] = []
            if let it = nftnl_expr_iter_create(rule.raw) {
                while let x = nftnl_expr_iter_next(it) { exprs.append(ExprCodec.read(x)) }
                nftnl_expr_iter_destroy(it)
            }
            let handle = nftnl_rule_get_u64(rule.raw, KernelNumbers.attr(NFTNL_RULE_HANDLE.rawValue))
            let comment = ElementCodec.comment(type: NFTNL_UDATA_RULE_COMMENT.rawValue) {
                nftnl_rule_get_data(rule.raw, KernelNumbers.attr(NFTNL_RULE_USERDATA.rawValue), &$0)
            }
            rulesByChain[chain, default: []].append(Rule(exprs: exprs, family: ipFamily, handle: handle, comment: comment))
        }
        for i in r.chains.indices { r.chains[i].rules = rulesByChain[r.chains[i].name] ?? [] }
        return r
    }

    /// The table's comment and flags, or nil when there is no such table.
    private func tableInfo(_ table: String, _ nfproto: UInt16) throws -> (String?, UInt32)? {
        var found: (String?, UInt32)?
        do {
            try request(NFT_MSG_GETTABLE, family: nfproto, flags: NLM_F_ACK, what: "get table \(table)") { nlh in
                let t = NftTable()
                nftnl_table_set_str(t.raw, KernelNumbers.attr(NFTNL_TABLE_NAME.rawValue), table)
                nftnl_table_nlmsg_build_payload(nlh, t.raw)
            } each: { nlh in
                let t = NftTable()
                guard nftnl_table_nlmsg_parse(nlh, t.raw) >= 0 else { found = (nil, 0); return }
                let comment = ElementCodec.comment(type: NFTNL_UDATA_TABLE_COMMENT.rawValue) {
                    nftnl_table_get_data(t.raw, KernelNumbers.attr(NFTNL_TABLE_USERDATA.rawValue), &$0)
                }
                found = (comment, nftnl_table_get_u32(t.raw, KernelNumbers.attr(NFTNL_TABLE_FLAGS.rawValue)))
            }
        } catch let e as NetlinkError where e.errno == ENOENT {
            return nil
        }
        return found
    }

    /// How many times a family-wide dump is tried before the read gives up.
    static let familyDumpTries = 50

    /// Sends one request and hands every answer to `each` until the kernel says it is done
    /// (NLMSG_DONE for a dump, the ack otherwise). Returns whether the kernel marked a dump
    /// interrupted (NLM_F_DUMP_INTR: the ruleset changed while it ran).
    @discardableResult
    func request(
        _ type: nf_tables_msg_types, family: UInt16, flags: Int32, what: String,
        build: (UnsafeMutablePointer<nlmsghdr>) -> Void,
        each: (UnsafePointer<nlmsghdr>) throws -> Void
    ) throws -> Bool {
        let buffer = MessageBuffer(capacity: 0)
        let s = nextSeq()
        let nlh = nftnl_nlmsg_build_hdr(buffer.tail, KernelNumbers.msg(type), family, UInt16(flags), s)!
        build(nlh)
        buffer.commit(nlh)
        try socket.send(buffer.bytes, what: what)
        var done = false, interrupted = false
        while !done {
            try socket.receive { h in
                guard h.pointee.nlmsg_seq == s else { return }
                if Int32(h.pointee.nlmsg_flags) & NLM_F_DUMP_INTR != 0 { interrupted = true }
                switch Int32(h.pointee.nlmsg_type) {
                case NLMSG_DONE:
                    if let e = h.doneError { throw NetlinkError(what, errno: e) }
                    done = true
                case NLMSG_ERROR:
                    let (err, _) = h.errorPayload
                    if err != 0 { throw NetlinkError(what, errno: err) }
                    done = true
                default: try each(h)
                }
            }
        }
        return interrupted
    }

    static func keyFields(_ type: UInt32) -> [KeyField] {
        var fields: [KeyField] = []
        var t = type
        while t != 0 {
            guard let f = [KeyField.ipv4Addr, .ipv6Addr, .inetProto, .inetService, .integer].first(where: { $0.nftTypeID == t & 0x3f })
            else { return [] }
            fields.insert(f, at: 0)
            t >>= 6
        }
        return fields
    }

    static func readElement(_ el: OpaquePointer, fields: [KeyField], data: [KeyField]?) -> SetElement? {
        var len: UInt32 = 0
        guard let p = nftnl_set_elem_get(el, KernelNumbers.attr(NFTNL_SET_ELEM_KEY), &len),
            let key = SetElement.decodeKey(Array(UnsafeRawBufferPointer(start: p, count: Int(len))), fields: fields)
        else { return nil }
        var e = SetElement(key: key)
        if nftnl_set_elem_is_set(el, KernelNumbers.attr(NFTNL_SET_ELEM_VERDICT)) {
            let code = Int32(bitPattern: nftnl_set_elem_get_u32(el, KernelNumbers.attr(NFTNL_SET_ELEM_VERDICT)))
            let chain =
                nftnl_set_elem_is_set(el, KernelNumbers.attr(NFTNL_SET_ELEM_CHAIN))
                ? str(nftnl_set_elem_get_str(el, KernelNumbers.attr(NFTNL_SET_ELEM_CHAIN))) : nil
            e.verdict = KernelNumbers.verdict(code, chain: chain)
        }
        if let data, let p = nftnl_set_elem_get(el, KernelNumbers.attr(NFTNL_SET_ELEM_DATA), &len) {
            e.data = SetElement.decodeKey(Array(UnsafeRawBufferPointer(start: p, count: Int(len))), fields: data)
        }
        e.comment = ElementCodec.comment(type: NFTNL_UDATA_SET_ELEM_COMMENT.rawValue) {
            nftnl_set_elem_get(el, KernelNumbers.attr(NFTNL_SET_ELEM_USERDATA), &$0)
        }
        return e
    }
}

private func str(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }

extension String {
    var trimmingNewline: String { hasSuffix("\n") ? String(dropLast()) : self }
}

extension BatchEncoder {
    func operationIndex(for s: UInt32) -> Int? {
        // Sequence numbers wrap: count from firstSeq modulo 2^32.
        let offset = s &- firstSeq
        guard offset >= 1, Int(offset - 1) < opForSeq.count else { return nil }
        let i = Int(opForSeq[Int(offset - 1)])
        return i >= 0 ? i : nil
    }

    /// The elements an element message carries, as a range of its operation's elements.
    func elements(for s: UInt32) -> Range<Int>? {
        let offset = s &- firstSeq
        guard offset >= 1 else { return nil }
        return elementsForSeq[Int(offset - 1)]
    }
}
