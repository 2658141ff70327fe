import Foundation
import NFTModel
import SvcnatModel

/// The manifests of one folder, file by file, indexed so that the Services a file change
/// touches can be recomputed alone. A file that fails to parse or validate keeps its last good
/// objects in force and is listed in `rejected` until it is fixed; so is a file that defines an
/// object another file already defines.
public final class ObjectStore {
    public let root: String
    private var files: [String: ClusterState] = [:]
    public private(set) var rejected: [String: [InputError]] = [:]
    public private(set) var warnings: [Warning] = []
    /// Objects skipped by the files read since `takeSkipped()` (other kinds, other proxies).
    private var skipped: [SkippedObject] = []
    /// `--allocate`: addresses and node ports for Services that lack them (manifests mode).
    public var allocation: Allocation.Settings? {
        didSet { allocationStale = true }
    }
    private var allocated = Allocation.Result()
    private var allocationStale = false
    /// Whether the next full state runs the allocation again (a change could have moved an
    /// address or a port); for tests.
    public var stateNeedsAllocation: Bool { allocationStale }
    /// What svcnat's tables held as allocated when the daemon started: kept, so a restart
    /// moves no address.
    public var heldAtStart = Allocation.Held() {
        didSet { allocationStale = true }
    }
    /// Services changed since `takeReview()`, to say what their manifests leave them without
    /// (kept only when `reviews`: manifests mode).
    private var unreviewed = Set<String>()
    public var reviews = false

    // kind+key -> file -> object; the winner is the smallest file path.
    private var services = Index<Service>()
    private var slices = Index<EndpointSlice>()
    private var endpoints = Index<Endpoints>()
    private var pods = Index<Pod>()
    private var ingresses = Index<Ingress>()
    private var slicesByService: [String: Set<String>] = [:]  // ns/service -> slice keys
    /// Pods by each of their labels, and selector Services by one pair of their selector
    /// (its least key): a Pod matches a selector only if it has every pair, so a Pod's change
    /// concerns only the Services indexed under one of its own labels, and a Service's Pods are
    /// among those under its indexed pair. A Pod change costs what it touches, not the
    /// namespace's size.
    private var podsByLabel: [LabelKey: Set<String>] = [:]
    private var servicesBySelector: [LabelKey: Set<String>] = [:]

    struct LabelKey: Hashable {
        var namespace: String
        var key: String
        var value: String
    }

    /// The pair a Service is indexed under; nil when its selector selects no Pod.
    static func indexPair(_ svc: Service) -> LabelKey? {
        guard let sel = svc.selector, let k = sel.keys.min() else { return nil }
        return LabelKey(namespace: svc.meta.namespace, key: k, value: sel[k]!)
    }

    /// The selector Services a Pod (with these labels) can back.
    private func services(for pod: Pod) -> Set<String> {
        var out = Set<String>()
        for (k, v) in pod.meta.labels {
            out.formUnion(servicesBySelector[LabelKey(namespace: pod.meta.namespace, key: k, value: v)] ?? [])
        }
        return out
    }
    /// Services (ns/name) whose ports may have changed since `takeDirty()`.
    private var dirty = Set<String>()

    /// Each key's definitions, file by file in order, so the first is the one that counts. Nearly
    /// every key has one, so a small array rather than a dictionary per key (10,000 of them
    /// cost 3 MB more).
    struct Index<T> {
        private(set) var byKey: [String: [(file: String, value: T)]] = [:]
        func winner(_ key: String) -> T? { byKey[key]?.first?.value }
        func winningFile(_ key: String) -> String? { byKey[key]?.first?.file }
        func files(_ key: String) -> [String] { byKey[key]?.map(\.file) ?? [] }
        mutating func set(_ key: String, file: String, _ value: T?) {
            var defs = byKey.removeValue(forKey: key) ?? []
            let i = defs.firstIndex { !($0.file < file) } ?? defs.endIndex
            let there = i < defs.endIndex && defs[i].file == file
            switch (value, there) {
            case (let v?, true): defs[i].value = v
            case (let v?, false): defs.insert((file, v), at: i)
            case (nil, true): defs.remove(at: i)
            case (nil, false): break
            }
            if !defs.isEmpty { byKey[key] = defs }
        }
        var winners: [T] { byKey.keys.sorted().compactMap(winner) }
    }

    /// `path` with its folder's links resolved and the last component kept as it is.
    static func canonical(_ path: String) -> String {
        let (dir, name) = split((path as NSString).expandingTildeInPath)
        guard !dir.isEmpty, !name.isEmpty, name != ".", name != ".." else { return (path as NSString).standardizingPath }
        let d = (dir as NSString).standardizingPath
        return d == "/" ? "/" + name : d + "/" + name
    }

    /// A path's folder and last component ("/" for a file at the top; "" for a bare name).
    static func split(_ path: String) -> (String, String) {
        var p = path
        while p.count > 1, p.hasSuffix("/") { p.removeLast() }
        guard let slash = p.lastIndex(of: "/") else { return ("", p) }
        let dir = slash == p.startIndex ? "/" : String(p[..<slash])
        return (dir, String(p[p.index(after: slash)...]))
    }

    /// No file at all, good or rejected: a folder that holds no manifest file.
    public var holdsNoFiles: Bool { files.isEmpty && rejected.isEmpty }

    public init(root: String) { self.root = root.isEmpty ? "" : (root as NSString).standardizingPath }

    static func isManifest(_ path: String) -> Bool {
        ManifestSource.isManifestName(path)
    }

    /// Reads every manifest under the root.
    public func loadAll() {
        for f in Array(files.keys) { replace(file: f, with: nil) }
        rejected = [:]
        clashing = []
        reload(ManifestSource.manifestFiles(in: root))
    }

    /// Files rejected only because another file defines the same object: checked again
    /// whenever the store changes, so `cp a.yaml b.yaml; rm a.yaml` leaves b.yaml in force.
    private var clashing = Set<String>()

    /// Re-reads the given paths: files written or created are decoded again, files gone are
    /// forgotten, folders are scanned. Returns whether anything that counts changed.
    @discardableResult
    public func reload(_ paths: [String]) -> Bool {
        let changed = load(paths)
        // A file that lost a clash may win now. One pass in path order settles them all: each is
        // checked against the files in force, those accepted earlier in the pass included.
        guard changed, !clashing.isEmpty else { return changed }
        _ = load(Array(clashing))
        return true
    }

    private func load(_ paths: [String]) -> Bool {
        var changed = false
        // A path's folder is resolved, the path itself is not: a ConfigMap's visible link is
        // its own key, not the `..2026_...` file it points to now.
        var wanted = Set<String>()
        for path in paths.map(Self.canonical) {
            let (dir, name) = Self.split(path)
            if name == "..data" {
                // The kubelet re-pointed a ConfigMap's `..data`: every visible file of that
                // folder may have changed at once; they are read again in one go.
                wanted.insert(dir)
            } else if !root.isEmpty, path.hasPrefix(root + "/"), path.dropFirst(root.count).contains("/.") {
                continue  // inside a dot-entry: not read
            } else {
                wanted.insert(path)
            }
        }
        let ordered = wanted.sorted()
        // Many files at once (a folder at start): decoded on all cores first, then taken in
        // order; each file is read by the worker that decodes it. A file that cannot be read is
        // read again below, for its error.
        var decoded: [String: ManifestDecoder] = [:]
        let batch = ordered.filter(Self.isManifest)
        if batch.count >= 64 {
            for (path, outcome) in zip(batch, ManifestDecoder.decodeEach(batch.map { .file($0) })) {
                if case .decoded(let d) = outcome { decoded[path] = d }
            }
        }
        for path in ordered {
            var isDir: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
            if exists && isDir.boolValue {
                var skipped: [(path: String, why: String)] = []
                if load(ManifestSource.manifestFiles(in: path, skipped: &skipped)) { changed = true }
                for s in skipped { warnings.append(Warning(text: "\(s.path): skipped: \(s.why)")) }
                continue
            }
            if !exists {
                // A file gone costs its own entries; only a folder gone (one that held files
                // once) is looked for among them all. An editor's temporary file that comes and
                // goes beside 50,000 others cost a scan of them all on every save.
                if files[path] != nil { replace(file: path, with: nil); changed = true }
                if rejected.removeValue(forKey: path) != nil { changed = true }
                clashing.remove(path)
                if folders.contains(path) {
                    let prefix = path + "/"
                    for g in files.keys where g.hasPrefix(prefix) { replace(file: g, with: nil); changed = true }
                    for g in rejected.keys where g.hasPrefix(prefix) { rejected[g] = nil; changed = true }
                    clashing = clashing.filter { !$0.hasPrefix(prefix) }
                }
                continue
            }
            guard Self.isManifest(path) else { continue }
            clashing.remove(path)
            var decoder = ManifestDecoder()
            if let d = decoded.removeValue(forKey: path) {
                decoder = d
            } else {
                switch ManifestSource.readText(path) {
                case .text(let text): decoder.decode(text, file: path)
                case .failed(let why):
                    rejected[path] = [InputError(file: path, message: why)]
                    noteFolders(of: path)
                    changed = true
                    continue
                }
            }
            warnings += decoder.warnings
            skipped += decoder.skipped
            let clashes = duplicates(of: decoder.state, outside: path)
            if decoder.errors.isEmpty && clashes.isEmpty {
                if files[path] != decoder.state { replace(file: path, with: decoder.state); changed = true }
                if rejected.removeValue(forKey: path) != nil { changed = true }
            } else {
                if rejected[path] != decoder.errors + clashes { changed = true }
                rejected[path] = decoder.errors + clashes
                noteFolders(of: path)
                if decoder.errors.isEmpty { clashing.insert(path) }
            }
        }
        return changed
    }

    /// Sets what one named source holds (the API source uses one per object:
    /// "api:services:ns/name"), or forgets it (nil). Returns whether anything changed.
    @discardableResult
    public func put(_ source: String, _ state: ClusterState?) -> Bool {
        guard files[source] != state else { return false }
        replace(file: source, with: state)
        return true
    }

    /// The names of the sources set with `put` that start with `prefix`.
    public func sources(withPrefix prefix: String) -> [String] { files.keys.filter { $0.hasPrefix(prefix) } }

    /// Objects of `state` that another file already defines: such a file is rejected, as
    /// `svcnat apply` rejects an object defined twice.
    private func duplicates(of state: ClusterState, outside path: String) -> [InputError] {
        func other<T>(_ index: Index<T>, _ key: String) -> String? { index.files(key).first { $0 != path } }
        var out: [InputError] = []
        func check<T>(_ kind: String, _ index: Index<T>, _ metas: [ObjectMeta]) {
            for m in metas {
                if let f = other(index, m.key) {
                    out.append(
                        InputError(file: path, object: "\(kind) \(m.key)", field: "metadata.name", message: "defined twice (also in \(f))"))
                }
            }
        }
        check("Service", services, state.services.map(\.meta))
        check("EndpointSlice", slices, state.endpointSlices.map(\.meta))
        check("Endpoints", endpoints, state.endpoints.map(\.meta))
        check("Pod", pods, state.pods.map(\.meta))
        check("Ingress", ingresses, state.ingresses.map(\.meta))
        return out
    }

    /// Every folder that has held a file of the store (never forgotten: a stale one costs a
    /// scan when a path of that name is deleted, nothing more).
    private var folders = Set<String>()

    private func noteFolders(of file: String) {
        var dir = file
        while let slash = dir.utf8.lastIndex(of: UInt8(ascii: "/")), slash != dir.utf8.startIndex {
            dir = String(dir[..<slash])
            guard folders.insert(dir).inserted else { return }
        }
    }

    /// Services, and endpoint objects (EndpointSlices, Endpoints, Pods), changed since
    /// `takeChanges()`; and the trigger times the changed EndpointSlices carry. For kube-proxy's
    /// `sync_proxy_rules_{service,endpoint}_changes_*` and network programming latency.
    public private(set) var pendingServiceChanges = Set<String>()
    public private(set) var pendingEndpointChanges = Set<String>()
    private var pendingTriggerTimes: [Double] = []

    /// What changed since the last call (after a sync that programmed it).
    public func takeChanges() -> (services: Int, endpoints: Int, triggerTimes: [Double]) {
        defer {
            pendingServiceChanges = []
            pendingEndpointChanges = []
            pendingTriggerTimes = []
        }
        return (pendingServiceChanges.count, pendingEndpointChanges.count, pendingTriggerTimes)
    }

    /// The keys of `kind` objects that differ between a file's old and new objects.
    private func noteChanges<T: Equatable>(_ kind: String, _ old: [T]?, _ new: [T]?, key: (T) -> String, into set: inout Set<String>)
        -> [(old: T?, new: T)]
    {
        guard !(old?.isEmpty ?? true) || !(new?.isEmpty ?? true) else { return [] }
        var before: [String: T] = [:]
        for o in old ?? [] { before[key(o)] = o }
        var changed: [(old: T?, new: T)] = []
        for n in new ?? [] {
            let k = key(n)
            let o = before.removeValue(forKey: k)
            if o != n {
                set.insert(kind + " " + k)
                changed.append((o, n))
            }
        }
        for k in before.keys { set.insert(kind + " " + k) }
        return changed
    }

    /// Swaps one file's objects in the indexes and marks the Services they touch.
    private func replace(file: String, with new: ClusterState?) {
        let old = files[file]
        _ = noteChanges("Service", old?.services, new?.services, key: \.meta.key, into: &pendingServiceChanges)
        for (o, n) in noteChanges("EndpointSlice", old?.endpointSlices, new?.endpointSlices, key: \.meta.key, into: &pendingEndpointChanges)
        {
            // Bounded while syncs fail: the earliest times are the ones that count.
            if let t = n.meta.lastChangeTriggerTime, t != o?.meta.lastChangeTriggerTime, pendingTriggerTimes.count < 10_000 {
                pendingTriggerTimes.append(t)
            }
        }
        _ = noteChanges("Endpoints", old?.endpoints, new?.endpoints, key: \.meta.key, into: &pendingEndpointChanges)
        _ = noteChanges("Pod", old?.pods, new?.pods, key: \.meta.key, into: &pendingEndpointChanges)
        if old == nil, new != nil { noteFolders(of: file) }
        files[file] = new
        // The Services in force for the keys this file names, before and after: most changes
        // (an endpoint, a label) leave the allocation as it is, and it is not run again.
        let serviceKeys = Set((old?.services ?? []).map(\.meta.key) + (new?.services ?? []).map(\.meta.key))
        let servicesBefore = serviceKeys.map { services.winner($0) }
        for s in [old, new].compactMap({ $0 }) {
            for svc in s.services { dirty.insert(svc.meta.key) }
            for sl in s.endpointSlices { dirty.insert("\(sl.meta.namespace)/\(sl.serviceName)") }
            for e in s.endpoints { dirty.insert(e.meta.key) }
            for p in s.pods { dirty.formUnion(services(for: p)) }
        }
        for svc in old?.services ?? [] {
            services.set(svc.meta.key, file: file, nil)
            if let pair = Self.indexPair(svc) { servicesBySelector[pair]?.remove(svc.meta.key) }
        }
        for sl in old?.endpointSlices ?? [] { slices.set(sl.meta.key, file: file, nil) }
        for e in old?.endpoints ?? [] { endpoints.set(e.meta.key, file: file, nil) }
        for p in old?.pods ?? [] {
            pods.set(p.meta.key, file: file, nil)
            for (k, v) in p.meta.labels { podsByLabel[LabelKey(namespace: p.meta.namespace, key: k, value: v)]?.remove(p.meta.key) }
        }
        for i in old?.ingresses ?? [] { ingresses.set(i.meta.key, file: file, nil) }
        for svc in new?.services ?? [] {
            services.set(svc.meta.key, file: file, svc)
            if let pair = Self.indexPair(svc) { servicesBySelector[pair, default: []].insert(svc.meta.key) }
        }
        if !serviceKeys.isEmpty, allocation != nil,
            !allocated.unaffected(replacing: servicesBefore, with: serviceKeys.map { services.winner($0) })
        {
            allocationStale = true
        }
        for sl in new?.endpointSlices ?? [] {
            slices.set(sl.meta.key, file: file, sl)
            slicesByService["\(sl.meta.namespace)/\(sl.serviceName)", default: []].insert(sl.meta.key)
        }
        for e in new?.endpoints ?? [] { endpoints.set(e.meta.key, file: file, e) }
        for p in new?.pods ?? [] {
            pods.set(p.meta.key, file: file, p)
            for (k, v) in p.meta.labels {
                podsByLabel[LabelKey(namespace: p.meta.namespace, key: k, value: v), default: []].insert(p.meta.key)
            }
        }
        for i in new?.ingresses ?? [] { ingresses.set(i.meta.key, file: file, i) }
        for p in new?.pods ?? [] { dirty.formUnion(services(for: p)) }
        // An object another file also holds stays indexed by the version now in force.
        for svc in old?.services ?? [] {
            if let w = services.winner(svc.meta.key), let pair = Self.indexPair(w) {
                servicesBySelector[pair, default: []].insert(w.meta.key)
            }
        }
        for p in old?.pods ?? [] {
            guard let w = pods.winner(p.meta.key) else { continue }
            for (k, v) in w.meta.labels {
                podsByLabel[LabelKey(namespace: w.meta.namespace, key: k, value: v), default: []].insert(w.meta.key)
            }
        }
    }

    /// Everything, for a full sync.
    public var state: ClusterState {
        refreshAllocation()
        return ClusterState(
            services: allocated.applied(to: services.winners), endpointSlices: slices.winners, endpoints: endpoints.winners,
            pods: pods.winners, ingresses: ingresses.winners)
    }

    /// The Services marked since the last call, and forgets them.
    public func takeDirty() -> Set<String> {
        refreshAllocation()
        if reviews { unreviewed.formUnion(dirty) }
        defer { dirty = [] }
        return dirty
    }

    /// A Service as it is programmed: with what was allocated to it.
    private func service(_ key: String) -> Service? {
        guard let svc = services.winner(key) else { return nil }
        return allocated.given[key].map { Allocation.apply($0, to: svc) } ?? svc
    }

    /// Allocates again after Services changed: the rule is over all Services (a new one can
    /// take a place another would have probed next), and the Services whose allocation moved
    /// are marked. It costs a hash per Service, only when Services changed.
    private func refreshAllocation() {
        guard allocationStale else { return }
        allocationStale = false
        // What was given before stays given: adding a Service moves no other's address.
        let winners = services.winners
        var held = Allocation.Held(allocated, winners)
        held.clusterIPs.merge(heldAtStart.clusterIPs) { mine, _ in mine }
        held.nodePorts.merge(heldAtStart.nodePorts) { mine, _ in mine }
        let next = allocation.map { Allocation.assign(winners, $0, keeping: held) } ?? Allocation.Result()
        for key in Set(next.given.keys).union(allocated.given.keys) where next.given[key] != allocated.given[key] {
            dirty.insert(key)
        }
        allocated = next
    }

    /// What the manifests leave the Services changed since the last call without (no address,
    /// no node port, no Pod, a named port no Pod has), and what could not be allocated; forgets
    /// them.
    public func takeReview() -> [Warning] {
        refreshAllocation()
        if reviews { unreviewed.formUnion(dirty) }
        defer { unreviewed = [] }
        var out: [Warning] = []
        for key in unreviewed.sorted() {
            guard let svc = service(key), let file = services.winningFile(key) else { continue }
            for p in allocated.given[key]?.problems ?? [] {
                out.append(Warning(text: "\(file): Service \(key): \(p); the Service gets no rules for it"))
            }
            var selected: [Pod] = []
            if let sel = svc.selector, let pair = Self.indexPair(svc) {
                selected = (podsByLabel[pair] ?? []).sorted().compactMap { pods.winner($0) }.filter { p in
                    sel.allSatisfy { p.meta.labels[$0.key] == $0.value }
                }
            }
            let hasEndpointObjects =
                (slicesByService[key] ?? []).contains { slices.winner($0)?.serviceName == svc.meta.name } || endpoints.winner(key) != nil
            out += ManifestReview.warnings(
                for: svc, file: file, hasEndpointObjects: hasEndpointObjects, pods: selected, allocating: allocation != nil)
        }
        return out
    }

    /// The objects skipped by the files read since the last call; forgets them.
    public func takeSkipped() -> [SkippedObject] {
        defer { skipped = [] }
        return skipped
    }

    /// Whether the file has a version in force (it was good once), for what is said when it is
    /// rejected.
    public func hasGoodVersion(_ path: String) -> Bool { files[path] != nil }

    /// One Service's ports as they are now (empty when the Service is gone or gets no rules).
    public func ports(ofService key: String, nodeName: String?, zone: String? = nil, family: IPFamily = .v4) -> [ServicePortState] {
        refreshAllocation()
        guard let svc = service(key) else { return [] }
        let sliceKeys = slicesByService[key] ?? []
        let svcSlices = sliceKeys.sorted().compactMap { slices.winner($0) }.filter { "\($0.meta.namespace)/\($0.serviceName)" == key }
        let podKeys = Self.indexPair(svc).flatMap { podsByLabel[$0] } ?? []
        return ProxyState.ports(
            of: svc, slices: svcSlices.isEmpty ? nil : svcSlices, endpoints: endpoints.winner(key),
            pods: podKeys.sorted().compactMap { pods.winner($0) }, nodeName: nodeName, zone: zone, family: family)
    }

    public func takeWarnings() -> [Warning] {
        defer { warnings = [] }
        return warnings
    }
}
