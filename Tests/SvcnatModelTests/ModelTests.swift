import Foundation
import SvcnatCore
import NFTModel
import SvcnatModel
import SvcnatExplain
import SvcnatSources
import Testing

let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
let examplesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("examples").path

func decode(_ yaml: String, file: String = "test.yaml") -> ManifestDecoder {
    var d = ManifestDecoder()
    d.decode(yaml, file: file)
    return d
}

func ip(_ s: String) -> IPAddress { IPAddress(s)! }

@Suite struct KubeProxyCompatibility {
    @Test func chainNamesUseKubeProxysHash() {
        let spn = ServicePortName(namespace: "ns1", name: "svc1", port: "p80", proto: .tcp)
        #expect(KubeProxyNames.serviceChain(spn) == "KUBE-SVC-XPGD46QRK7WJZT7O")
        let ep = EndpointAddress(ip: ip("10.180.0.1"), port: 80)
        #expect(KubeProxyNames.endpointChain(spn, ep) == "KUBE-SEP-SXIVWICOYRO3J4NJ")
    }

    @Test func probabilitiesPrintAsIptablesSaveStoresThem() {
        #expect(IptablesRenderer.storedProbability(2) == "0.50000000000")
        #expect(IptablesRenderer.storedProbability(3) == "0.33333333349")
        #expect(IptablesRenderer.storedProbability(4) == "0.25000000000")
        #expect(IptablesRenderer.storedProbability(10) == "0.10000000009")
    }
}

@Suite struct Rules {
    @Test func everyItemReadsBackFromItsExpressions() {
        let items: [RuleItem] = [
            .ctStateNew, .ctStatusDNAT, .l4proto(.sctp), .saddrNotIn(IPPrefix("198.19.0.0/16")!),
            .saddrNotIn(IPPrefix("198.19.128.0/17")!), .saddrNotIn(IPPrefix("198.19.1.2/32")!),
            .saddrNotIn(IPPrefix("0.0.0.0/0")!), .ipMatch(.saddr, .eq, IPPrefix("0.0.0.0/0")!),
            .markIsClear(0x4000), .markSetOr(0x4000), .markSetXor(0x4000), .numgenIsZero(modulus: 7),
            .dnat(ip("198.19.1.2"), port: 8888), .masquerade(fullyRandom: true), .masquerade(fullyRandom: false),
            .reject(.tcpReset), .reject(.icmpPortUnreachable), .dispatch(map: "m", family: .v4), .saddrDaddrIn(set: "s", family: .v4),
            .daddrInSet("s", .v4), .saddrInSet("s", .v4), .rememberSaddr("s", .v4),
            .dnatFromMap(modulus: 3, offset: 8, map: "m", family: .v4),
            .verdict(.goto("c")), .verdict(.jump("c")), .verdict(.return), .verdict(.accept)
        ]
        for item in items { #expect(RuleItem.parse(item.exprs, family: .v4) == [item], "\(item)") }
        #expect(RuleItem.parse(items.flatMap(\.exprs), family: .v4) == items)
        #expect(RuleItem.parse([.unknown("counter")], family: .v4) == [.raw(.unknown("counter"))])
        // IPv6: 16-byte addresses at offsets 8 and 24, and concatenations whose next field
        // starts in register 2.
        let v6: [RuleItem] = [
            .ctStateNew, .l4proto(.udp), .saddrNotIn(IPPrefix("2001:db8:1::/48")!), .saddrNotIn(IPPrefix("2001:db8:1::/61")!),
            .ipMatch(.daddr, .neq, IPPrefix("::1/128")!), .ipMatch(.daddr, .eq, IPPrefix("2001:db8::1/128")!),
            .ipMatch(.saddr, .eq, IPPrefix("::/0")!),
            .dnat(ip("2001:db8:1:2::2"), port: 8080), .reject(.icmpv6PortUnreachable),
            .dispatch(map: "m", family: .v6), .saddrDaddrIn(set: "s", family: .v6), .daddrInSet("s", .v6), .saddrInSet("s", .v6),
            .rememberSaddr("s", .v6), .dnatFromMap(modulus: 2, offset: 0, map: "m", family: .v6), .fibDaddrLocal,
            .masquerade(fullyRandom: true)
        ]
        for item in v6 { #expect(RuleItem.parse(item.exprs, family: .v6) == [item], "\(item)") }
        #expect(RuleItem.parse(v6.flatMap(\.exprs), family: .v6) == v6)
        #expect(RuleItem.dispatch(map: "m", family: .v6).exprs[1] == .meta(key: .l4proto, dreg: .reg(2)))
        #expect(RuleItem.dispatch(map: "m", family: .v6).exprs[2] == .payload(base: .transport, offset: 2, length: 2, dreg: .reg32(5)))
        #expect(RuleItem.dispatch(map: "m", family: .v4).exprs[1] == .meta(key: .l4proto, dreg: .reg32(1)))
        // A /0 loads the whole address, as nft does: the kernel refuses a zero-length load.
        for p in ["0.0.0.0/0", "::/0"] {
            let e = RuleItem.ipMatch(.saddr, .eq, IPPrefix(p)!).exprs
            guard case .payload(_, _, let length, _) = e.first else { Issue.record("\(e)"); continue }
            #expect(length == (p == "::/0" ? 16 : 4))
        }
    }

    @Test(arguments: EndpointSelection.allCases)
    func bothShapesGiveEqualProbabilities(selection: EndpointSelection) throws {
        let r = try ManifestSource.load([examplesDir])
        let (_, ruleset) = try Reconciler.desired(
            r.state, config: ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], endpointSelection: selection))
        let view = try #require(ruleset.serviceViews.first)
        #expect(view.endpoints.map(\.1) == ["1/3", "1/3", "1/3"])
        #expect(view.frontends == ["198.18.100.10:80"])
    }
}

@Suite struct Golden {
    func render(_ format: String, _ args: ProxyConfig) throws -> String {
        let r = try ManifestSource.load([examplesDir, fixtures + "/services.yaml"])
        let (proxy, ruleset) = try Reconciler.desired(r.state, config: args)
        return format == "nft" ? ruleset.nftText : IptablesRenderer(args.translator).render(proxy)
    }

    /// Both tables for dual-stack and IPv6 Services (`apply --dry-run` prints them one after the other).
    @Test func dualStackDryRunMatchesGolden() throws {
        let r = try ManifestSource.load([fixtures + "/dualstack.yaml"])
        let config = ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!, IPPrefix("2001:db8:1::/48")!], nodeName: "node-a")
        let tables = try Reconciler.desiredTables(r.state, config: config)
        #expect(tables.map(\.family) == [.v4, .v6])
        let want = try String(contentsOfFile: fixtures + "/golden.dualstack.nft", encoding: .utf8)
        #expect(tables.map(\.ruleset.nftText).joined() == want)
        // Without IPv6 Services (nor IPv6 prefixes) there is no ip6 table.
        #expect(try Reconciler.desiredTables(ManifestSource.load([examplesDir]).state, config: config).map(\.family) == [.v4])
    }

    @Test(arguments: [("nft", EndpointSelection.map), ("nft", .cascade), ("iptables", .map)])
    func dryRunMatchesGolden(format: String, selection: EndpointSelection) throws {
        let got = try render(format, ProxyConfig(clusterCIDRs: [IPPrefix("198.19.0.0/16")!], endpointSelection: selection))
        let name = format == "nft" ? "golden.\(selection.rawValue).nft" : "golden.iptables"
        let want = try String(contentsOfFile: fixtures + "/" + name, encoding: .utf8)
        #expect(got == want)
    }
}

@Suite struct ExplainQueries {
    @Test func destinationsParse() {
        #expect(Explain.parse("198.18.100.10:80") == .address(IPAddress("198.18.100.10")!, port: 80, proto: .tcp))
        #expect(Explain.parse("198.18.100.10:53/udp") == .address(IPAddress("198.18.100.10")!, port: 53, proto: .udp))
        #expect(Explain.parse(":30080") == .nodePort(30080, proto: .tcp))
        #expect(Explain.parse("codereview/codereviewapi") == .service(namespace: "codereview", name: "codereviewapi", port: nil))
        #expect(
            Explain.parse("codereviewapi.codereview.svc.cluster.local:80")
                == .service(namespace: "codereview", name: "codereviewapi", port: "80"))
        #expect(Explain.parse("nonsense") == nil)
        #expect(Explain.parse("198.18.100.10") == nil)
    }
}

@Suite struct ManifestFolder {
    @Test func aSecondDefinitionIsRejectedAndTheFirstStays() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svcnat-store-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let svc = { (ip: String) in "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: \(ip), ports: [{port: 80}]}\n"
        }
        try svc("198.18.100.1").write(toFile: dir + "/a.yaml", atomically: true, encoding: .utf8)
        try svc("198.18.100.2").write(toFile: dir + "/b.yaml", atomically: true, encoding: .utf8)
        let store = ObjectStore(root: dir)
        store.loadAll()
        #expect(store.state.services.map { $0.clusterIP?.description } == ["198.18.100.1"])
        #expect(
            store.rejected[dir + "/b.yaml"]?.first?.description.contains(
                "Service default/web: metadata.name: defined twice (also in \(dir)/a.yaml)") == true)
        // The first goes away: the second is read again on its next change and then stands.
        try FileManager.default.removeItem(atPath: dir + "/a.yaml")
        store.reload([dir + "/a.yaml", dir + "/b.yaml"])
        #expect(store.state.services.map { $0.clusterIP?.description } == ["198.18.100.2"])
        #expect(store.rejected.isEmpty)
    }

    /// A folder as the kubelet mounts a ConfigMap: visible links into `..data`, which points at
    /// a `..2026_...` folder. Each object is read once, through its link; re-pointing `..data`
    /// swaps every file at once; dot-entries are never read.
    @Test func aConfigMapMountIsReadOnceAndSwappedWhole() throws {
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("svcnat-configmap-\(getpid())").path
        try? fm.removeItem(atPath: dir)
        defer { try? fm.removeItem(atPath: dir) }
        let svc = { (name: String, ip: String) in
            "apiVersion: v1\nkind: Service\nmetadata: {name: \(name)}\nspec: {clusterIP: \(ip), ports: [{port: 80}]}\n"
        }
        try fm.createDirectory(atPath: dir + "/..2026_12_02_a", withIntermediateDirectories: true)
        try svc("web", "198.18.100.1").write(toFile: dir + "/..2026_12_02_a/web.yaml", atomically: true, encoding: .utf8)
        try fm.createSymbolicLink(atPath: dir + "/..data", withDestinationPath: "..2026_12_02_a")
        try fm.createSymbolicLink(atPath: dir + "/web.yaml", withDestinationPath: "..data/web.yaml")
        try "kind: [not yaml\n".write(toFile: dir + "/.web.yaml.swp", atomically: true, encoding: .utf8)

        // apply: once, also when the folder and its file are both named, or a file twice.
        for paths in [[dir], [dir, dir + "/web.yaml"], [dir + "/web.yaml", dir + "/web.yaml"]] {
            let r = try ManifestSource.load(paths)
            #expect(r.state.services.map { $0.clusterIP?.description } == ["198.18.100.1"], "\(paths)")
        }
        let store = ObjectStore(root: dir)
        store.loadAll()
        #expect(store.state.services.map { $0.clusterIP?.description } == ["198.18.100.1"])
        #expect(store.rejected.isEmpty)

        // The kubelet's update: a new timestamped folder, `..data` re-pointed by rename, then a
        // link for the new key, then the old folder removed.
        try fm.createDirectory(atPath: dir + "/..2026_12_02_b", withIntermediateDirectories: true)
        try svc("web", "198.18.100.2").write(toFile: dir + "/..2026_12_02_b/web.yaml", atomically: true, encoding: .utf8)
        try svc("api", "198.18.100.3").write(toFile: dir + "/..2026_12_02_b/api.yaml", atomically: true, encoding: .utf8)
        #expect(!store.reload([dir + "/..2026_12_02_b", dir + "/..2026_12_02_b/web.yaml"]))
        try fm.createSymbolicLink(atPath: dir + "/..data_tmp", withDestinationPath: "..2026_12_02_b")
        #expect(rename(dir + "/..data_tmp", dir + "/..data") == 0)
        #expect(store.reload([dir + "/..data"]))
        #expect(store.state.services.map { $0.clusterIP?.description } == ["198.18.100.2"])
        try fm.createSymbolicLink(atPath: dir + "/api.yaml", withDestinationPath: "..data/api.yaml")
        #expect(store.reload([dir + "/api.yaml"]))
        try fm.removeItem(atPath: dir + "/..2026_12_02_a")
        #expect(!store.reload([dir + "/..2026_12_02_a"]))
        #expect(store.state.services.map(\.meta.name) == ["api", "web"])
        #expect(store.rejected.isEmpty)
    }

    /// A deleted folder takes its files (good and rejected) along; a deleted temporary file
    /// beside them changes nothing.
    @Test func aDeletedFolderTakesItsFilesAndATemporaryFileNothing() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svcnat-folders-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir + "/team/sub", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let svc = { (name: String, ip: String) in
            "apiVersion: v1\nkind: Service\nmetadata: {name: \(name)}\nspec: {clusterIP: \(ip), ports: [{port: 80}]}\n"
        }
        try svc("top", "198.18.100.1").write(toFile: dir + "/top.yaml", atomically: true, encoding: .utf8)
        try svc("deep", "198.18.100.2").write(toFile: dir + "/team/sub/deep.yaml", atomically: true, encoding: .utf8)
        try "kind: [broken\n".write(toFile: dir + "/team/broken.yaml", atomically: true, encoding: .utf8)
        // A link to a folder (here a loop back to the top) is not followed, as `find -P`.
        try FileManager.default.createSymbolicLink(atPath: dir + "/team/loop", withDestinationPath: "..")
        #expect(ManifestSource.manifestFiles(in: dir) == [dir + "/team/broken.yaml", dir + "/team/sub/deep.yaml", dir + "/top.yaml"])
        let store = ObjectStore(root: dir)
        store.loadAll()
        #expect(store.state.services.map(\.meta.name) == ["deep", "top"])
        #expect(store.rejected.keys.sorted() == [dir + "/team/broken.yaml"])
        #expect(!store.reload([dir + "/top.yaml.swp"]))
        try FileManager.default.removeItem(atPath: dir + "/team")
        #expect(store.reload([dir + "/team"]))
        #expect(store.state.services.map(\.meta.name) == ["top"])
        #expect(store.rejected.isEmpty)
    }
}

@Suite struct ElementKeys {
    /// A key's fields as the kernel stores them, written here from the fields alone: network
    /// order for addresses and ports, host order for numbers, each padded to 4 bytes.
    static func kernelBytes(_ fields: [KeyValue]) -> [UInt8] {
        fields.flatMap { f -> [UInt8] in
            switch f {
            case .ip(let a) where a.family == .v4: withUnsafeBytes(of: a.v4Value.bigEndian) { Array($0) }
            case .ip(let a): withUnsafeBytes(of: a.high.bigEndian) { Array($0) } + withUnsafeBytes(of: a.low.bigEndian) { Array($0) }
            case .proto(let p): [p.number, 0, 0, 0]
            case .port(let p): [UInt8(p >> 8), UInt8(p & 0xff), 0, 0]
            case .integer(let n): withUnsafeBytes(of: n.littleEndian) { Array($0) }
            }
        }
    }

    static func randomField(_ rng: inout SplitMix) -> KeyValue {
        switch rng.next() % 5 {
        case 0: .ip(IPAddress(UInt32(truncatingIfNeeded: rng.next())))
        case 1: .ip(IPAddress(v6: rng.next() | 1 << 63, rng.next()))
        case 2: .proto(TransportProtocol.allCases[Int(rng.next() % 3)])
        case 3: .port(UInt16(truncatingIfNeeded: rng.next()))
        default: .integer(UInt32(truncatingIfNeeded: rng.next()))
        }
    }

    /// Random keys of one to seven fields, some packed and some not: each reads back as its
    /// fields, stores the kernel's bytes, equals and hashes as its fields do, and orders as
    /// its fields do against any key of the same fields' kinds.
    @Test func keysBehaveAsTheirFields() {
        var rng = SplitMix(seed: 11)
        var packed = 0
        var keys: [[KeyValue]] = []
        for _ in 0..<4000 {
            let n = Int(rng.next() % 7) + 1
            var f = (0..<n).map { _ in Self.randomField(&rng) }
            // Half the time a twin with one field changed, so equal and near keys meet.
            if rng.next() % 2 == 0, let last = keys.last, !last.isEmpty {
                f = last
                if rng.next() % 2 == 0 {
                    let i = Int(rng.next() % UInt64(f.count))
                    if case .port(let p) = f[i] { f[i] = .port(p &+ 1) }
                }
            }
            keys.append(f)
            let k = ElementKey(f)
            if k.packed != nil { packed += 1 }
            #expect(Array(k) == f)
            #expect(k.count == f.count)
            #expect(k.bytes == Self.kernelBytes(f))
            #expect(SetElement.decodeKey(k.bytes, fields: f.map(Self.kind)) == k)
        }
        #expect(packed > 500 && packed < 3500, "both forms exercised: \(packed) packed")
        for (a, b) in zip(keys, keys.dropFirst()) {
            let ka = ElementKey(a), kb = ElementKey(b)
            #expect((ka == kb) == (a == b))
            if a == b { #expect(ka.hashValue == kb.hashValue) }
            if a.map(Self.kind) == b.map(Self.kind) {
                #expect(ka.precedes(kb) == a.lexicographicallyPrecedes(b), "\(a) against \(b)")
            }
        }
    }

    /// The sort of elements by key gives what a plain sort by the keys' fields gives, with
    /// equal keys in their given order, for sets of packed keys of one shape (sorted as
    /// numbers), of unpacked keys, and of both mixed.
    @Test func elementsSortAsTheirKeysFields() {
        var rng = SplitMix(seed: 12)
        for shape in 0..<3 {
            let elements = (0..<3000).map { i -> SetElement in
                let a = KeyValue.ip(IPAddress(UInt32(198 << 24 | 18 << 16) | UInt32(rng.next() % 64)))
                let port = KeyValue.port(UInt16(rng.next() % 4))
                let v6 = KeyValue.ip(IPAddress(v6: 0x2001_0db8_0000_0000, rng.next() % 8))
                let key: [KeyValue] = shape == 0 || (shape == 2 && i % 2 == 0) ? [a, port] : [v6, port]
                return SetElement(key: ElementKey(key), data: ElementKey([.integer(UInt32(i))]))
            }
            let expected = elements.enumerated().sorted {
                Array($0.element.key) != Array($1.element.key)
                    ? Array($0.element.key).lexicographicallyPrecedes(Array($1.element.key)) : $0.offset < $1.offset
            }.map(\.element)
            #expect(SetElement.sorted(elements) == expected, "shape \(shape)")
        }
    }

    static func kind(_ v: KeyValue) -> KeyField {
        switch v {
        case .ip(let a): a.family == .v4 ? .ipv4Addr : .ipv6Addr
        case .proto: .inetProto
        case .port: .inetService
        case .integer: .integer
        }
    }
}

@Suite struct PrintedText {
    /// A table big enough to be printed in many pieces on both cores (10,000 elements in one
    /// set, 600 chains) reads as the layout written out here line by line, in order.
    @Test func aLargeTableIsPrintedInPiecesAsOneText() {
        let n = 10_000
        let addresses = (0..<n).map { "198.18.\($0 / 256).\($0 % 256)" }
        let elements = addresses.map { SetElement(key: [.ip(IPAddress($0)!)]) }
        let chains = (0..<600).map { Chain(name: "c\($0)", rules: [Rule([.verdict(.drop)])]) }
        let small = NamedSet(name: "a", key: [.ipv4Addr], data: .none, elements: [SetElement(key: [.ip(IPAddress("198.19.0.1")!)])])
        let big = NamedSet(name: "s", key: [.ipv4Addr], data: .none, elements: elements)
        let r = Ruleset(family: .ip, table: "t", sets: [small, big], chains: chains)
        var expected = "table ip t {\n\tset a {\n\t\ttype ipv4_addr\n\t\telements = {\n\t\t\t198.19.0.1\n\t\t}\n\t}\n"
        expected += "\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = {\n"
        expected += addresses.map { "\t\t\t" + $0 }.joined(separator: ",\n") + "\n\t\t}\n\t}\n"
        expected += (0..<600).map { "\n\tchain c\($0) {\n\t\tdrop\n\t}\n" }.joined() + "}\n"
        #expect(r.nftText == expected)
    }
}
