import CoreMetrics
import Dispatch
import Foundation
import Logging
import NFTModel
import SvcnatModel
import SvcnatSources

/// The Kubernetes API as the daemon's source: one reflector per collection (Services,
/// EndpointSlices, this node's Node) feeding an `ObjectStore`, one source name per object
/// ("api:services:ns/name"). The first sync is asked for once every collection has listed, so a
/// half-known cluster is never programmed and nothing is deleted while a list loads.
///
/// Everything but `problems` runs on the daemon's queue.
public final class APISource: @unchecked Sendable {
    public let client: APIClient
    let store: ObjectStore
    let queue: DispatchQueue
    let log: Logger
    let resources: [Resource]
    /// Whether a change of the Node's zone asks for a full sync (not when --node-zone is given).
    let followsNodeZone: Bool
    /// Asked for a sync (full or partial) with the reason.
    let requestSync: (_ full: Bool, _ reason: String) -> Void
    /// The zone of this node's Node object (its topology label), once known.
    public private(set) var nodeZone: String?
    /// Whether every collection has listed once.
    public private(set) var isReady = false
    private var listed = Set<String>()
    private var tasks: [Task<Void, Never>] = []
    private let lock = NSLock()
    private var staleness: [String: String] = [:]

    public init(
        client: APIClient, store: ObjectStore, nodeName: String?, followsNodeZone: Bool, queue: DispatchQueue, log: Logger,
        requestSync: @escaping (_ full: Bool, _ reason: String) -> Void
    ) {
        self.followsNodeZone = followsNodeZone
        self.client = client
        self.store = store
        self.queue = queue
        self.log = log
        self.requestSync = requestSync
        resources = [.services, .endpointSlices] + (nodeName.map { [Resource.node($0)] } ?? [])
    }

    /// Collections that are not (or no longer) listed and watched, with why (any thread).
    public var problems: [String: String] { lock.withLock { staleness } }
    /// Whether this node may take traffic (`NodeInfo.eligible`); read from any thread.
    public var nodeEligible: Bool { lock.withLock { eligible } }
    private var eligible = true

    /// Starts the reflectors (on the queue).
    public func start() {
        lock.withLock { for r in resources { staleness[r.name] = "not listed yet" } }
        for r in resources { Self.up(r.name, false) }
        for r in resources {
            let reflector = Reflector(
                client: client, resource: r,
                onChange: { [weak self] change in
                    guard let self else { return }
                    self.queue.async { self.apply(change, of: r) }
                },
                onStatus: { [weak self] status in
                    guard let self else { return }
                    self.queue.async { self.note(status, of: r) }
                })
            tasks.append(Task { await reflector.run() })
        }
    }

    /// Stops the reflectors and the client (blocks until the client is shut down).
    public func stop() {
        for t in tasks { t.cancel() }
        let done = DispatchSemaphore(value: 0)
        let client = self.client
        Task {
            await client.shutdown(); done.signal()
        }
        done.wait()
    }

    private func apply(_ change: Reflector.Change, of r: Resource) {
        let prefix = "api:\(r.name):"
        var changed = false
        var objects: [APIObjects.Object] = []
        switch change {
        case .replaced(let all, let kept):
            let keep = Set(all.map { prefix + $0.key } + kept.map { prefix + $0 })
            for s in store.sources(withPrefix: prefix) where !keep.contains(s) { changed = store.put(s, nil) || changed }
            for o in all { changed = store.put(prefix + o.key, o.state) || changed }
            objects = all
        case .put(let o):
            changed = store.put(prefix + o.key, o.state)
            objects = [o]
            Self.count("svcnat_source_events_total", r.name)
        case .deleted(let o):
            changed = store.put(prefix + o.key, nil)
            Self.count("svcnat_source_events_total", r.name)
        }
        if r.kind == "Node", let node = objects.first?.node, node.eligible != nodeEligible {
            log.warning(
                "node \(node.name) is \(node.eligible ? "eligible again" : "being deleted"): /healthz says nodeEligible \(node.eligible)")
            lock.withLock { eligible = node.eligible }
        }
        if r.kind == "Node", let node = objects.first?.node, node.zone != nodeZone {
            log.info("node \(node.name): zone \(node.zone ?? "none"), addresses \(node.addresses.joined(separator: ", "))")
            nodeZone = node.zone
            if followsNodeZone { requestSync(true, "node zone changed") }
        }
        if changed { requestSync(false, "\(r.name) changed") }
    }

    /// In a pod, KUBERNETES_SERVICE_HOST is the `kubernetes` Service's ClusterIP, which only a
    /// Service proxy programs: without kube-proxy, svcnat cannot reach it before its own first
    /// sync. Said while no list has completed.
    var inClusterHint: String {
        guard !isReady, client.config.origin == KubeConfig.inClusterOrigin else { return "" }
        return "; note: in a pod the API server is reached at KUBERNETES_SERVICE_HOST, the kubernetes Service's ClusterIP, "
            + "which only a Service proxy programs: without kube-proxy nothing does until svcnat has synced, so give the "
            + "control-plane endpoint instead (--config with kubeadm's kube-proxy ConfigMap, whose kubeconfig.conf names it, "
            + "--kubeconfig, or --master)"
    }

    private func note(_ status: Reflector.Status, of r: Resource) {
        switch status {
        case .listed(let n, let rv):
            log.info("source: listed \(n) \(r.name) at resourceVersion \(rv)")
            lock.withLock { staleness[r.name] = nil }
            Self.count("svcnat_source_lists_total", r.name)
            Self.up(r.name, true)
            listed.insert(r.name)
            if !isReady && listed.count == resources.count {
                isReady = true
                requestSync(true, "initial lists complete")
            }
        case .watching(let rv):
            log.debug("source: watching \(r.name) from resourceVersion \(rv)")
            lock.withLock { staleness[r.name] = nil }
            Self.up(r.name, true)
        case .relisting(let reason):
            log.warning("source: \(r.name): \(reason); listing again")
        case .failed(let message, let retry):
            // "Last good" only once there were rules from this source: before the first
            // complete lists, nothing has been programmed from it.
            let state =
                isReady
                ? "the last good rules stay in force"
                : "nothing is programmed from the API until its first lists complete (the rules in force, if any, stay)"
            log.error("source: \(message); \(state); retrying in \(String(format: "%.1f", retry)) s\(inClusterHint)")
            lock.withLock { staleness[r.name] = message }
            Self.count("svcnat_source_errors_total", r.name)
            Self.up(r.name, false)
        case .rejected(let errors):
            for e in errors { log.warning("source: \(r.name): skipped an object: \(e)") }
        }
    }

    // Per collection (services, endpointslices, nodes), through swift-metrics.
    private static func count(_ label: String, _ resource: String) {
        CoreMetrics.Counter(label: label, dimensions: [("resource", resource)]).increment()
    }
    /// svcnat_source_up: 1 while the collection is listed and watched, 0 while it is stale.
    private static func up(_ resource: String, _ up: Bool) {
        CoreMetrics.Gauge(label: "svcnat_source_up", dimensions: [("resource", resource)]).record(up ? 1 : 0)
    }
}
