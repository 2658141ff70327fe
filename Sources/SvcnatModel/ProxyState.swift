import NFTModel

/// What the proxy must do, independent of how the kernel is told: for each Service port, where
/// it is reached and which endpoints serve it. Built from a `ClusterState` as kube-proxy builds
/// its service and endpoints maps, with endpoints from EndpointSlices, else v1 Endpoints, else
/// the Service's selector over Pods (as the endpoints controller would).

/// kube-proxy's ServicePortName: namespace/name:port, plus the protocol.
public struct ServicePortName: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var namespace: String
    public var name: String
    public var port: String
    public var proto: TransportProtocol

    public init(namespace: String, name: String, port: String, proto: TransportProtocol) {
        self.namespace = namespace
        self.name = name
        self.port = port
        self.proto = proto
    }

    /// "ns/name:port", or "ns/name" for an unnamed port, as kube-proxy prints it.
    public var description: String { serviceKey + (port.isEmpty ? "" : ":\(port)") }
    /// The Service's own key, namespace/name, as the object stores index it.
    public var serviceKey: String { "\(namespace)/\(name)" }

    public static func < (a: Self, b: Self) -> Bool {
        (a.namespace, a.name, a.port, a.proto) < (b.namespace, b.name, b.port, b.proto)
    }
}

public enum FrontendKind: String, Hashable, Sendable, Codable {
    case clusterIP = "ClusterIP", externalIP = "ExternalIP", loadBalancer = "LoadBalancer"
}

public struct Frontend: Hashable, Sendable, Comparable {
    public var kind: FrontendKind
    public var ip: IPAddress
    public var port: UInt16
    public init(kind: FrontendKind, ip: IPAddress, port: UInt16) {
        self.kind = kind
        self.ip = ip
        self.port = port
    }
    public static func < (a: Self, b: Self) -> Bool { (a.ip, a.port) < (b.ip, b.port) }
}

public struct ServicePortState: Hashable, Sendable {
    public var name: ServicePortName
    /// The ClusterIP first, then external and load-balancer IPs.
    public var frontends: [Frontend]
    /// Usable endpoints without duplicates: this node's first, then the others, each part sorted.
    public var endpoints: [EndpointAddress]
    /// How many of `endpoints` (the first ones) are on this node.
    public var localEndpointCount = 0
    /// Where the endpoints of Cluster-policy traffic start: 0, or `localEndpointCount` when the
    /// local ones are this node's serving-and-terminating endpoints, which only Local-policy
    /// traffic uses (kube-proxy's fallback per node) while other nodes have ready ones.
    public var clusterStart = 0
    /// This node's ready endpoints, which the health check node port counts: a node whose
    /// endpoints are all terminating answers 503 there, so load balancers drain it.
    public var localReadyCount = 0
    public var externalLocal = false
    public var internalLocal = false
    public var healthCheckNodePort: UInt16?
    /// ClientIP session affinity: how long a client keeps its endpoint, in seconds.
    public var affinityTimeout: UInt32?
    /// The node port, for NodePort and LoadBalancer Services that have one.
    public var nodePort: UInt16? = nil
    /// Sources allowed to reach the load-balancer IPs (all when empty).
    public var sourceRanges: [IPPrefix] = []
    /// Whether svcnat allocated the cluster IP or the node port (`--allocate`): their map
    /// elements say so in their comments, so `show` can tell.
    public var clusterIPAllocated = false
    public var nodePortAllocated = false

    public init(
        name: ServicePortName, frontends: [Frontend], endpoints: [EndpointAddress], nodePort: UInt16? = nil,
        sourceRanges: [IPPrefix] = []
    ) {
        self.name = name
        self.frontends = frontends
        self.endpoints = endpoints
        self.nodePort = nodePort
        self.sourceRanges = sourceRanges
    }

    public var clusterIP: Frontend? { frontends.first { $0.kind == .clusterIP } }
    /// Frontends reached from outside the cluster: external and load-balancer IPs.
    public var externalFrontends: [Frontend] { frontends.filter { $0.kind != .clusterIP } }
}

public struct ProxyState: Hashable, Sendable {
    public var servicePorts: [ServicePortState]

    public var endpointCount: Int { servicePorts.reduce(0) { $0 + $1.endpoints.count } }
    public var serviceCount: Int { Set(servicePorts.map(\.name.serviceKey)).count }

    public init(servicePorts: [ServicePortState]) { self.servicePorts = servicePorts }

    /// The proxy state of one family's table: only that family's cluster IP, external and
    /// load-balancer IPs, source ranges and endpoints.
    public init(_ cluster: ClusterState, nodeName: String? = nil, zone: String? = nil, family: IPFamily = .v4) {
        self = Self.build(cluster, nodeName: nodeName, zone: zone, families: [family])[0]
    }

    /// Each family's proxy state, in `IPFamily.allCases` order, from one pass that groups the
    /// endpoints by Service.
    public static func perFamily(_ cluster: ClusterState, nodeName: String? = nil, zone: String? = nil) -> [ProxyState] {
        build(cluster, nodeName: nodeName, zone: zone, families: IPFamily.allCases)
    }

    private static func build(_ cluster: ClusterState, nodeName: String?, zone: String?, families: [IPFamily]) -> [ProxyState] {
        let slices = Dictionary(grouping: cluster.endpointSlices) { "\($0.meta.namespace)/\($0.serviceName)" }
        let endpoints = Dictionary(cluster.endpoints.map { ($0.meta.key, $0) }, uniquingKeysWith: { _, last in last })
        let pods = Dictionary(grouping: cluster.pods) { $0.meta.namespace }
        return families.map { family in
            let ports = Parallel.map(cluster.services.filter { $0.clusterIP(family) != nil }) { svc in
                let key = svc.meta.key
                return Self.ports(
                    of: svc, slices: slices[key], endpoints: endpoints[key],
                    pods: pods[svc.meta.namespace] ?? [], nodeName: nodeName, zone: zone, family: family)
            }
            return ProxyState(servicePorts: ports.joined().sorted { $0.name < $1.name })
        }
    }

    /// One Service's ports with their frontends and usable endpoints: from its EndpointSlices if
    /// it has any, else its v1 Endpoints, else its selector over the Pods of its namespace.
    public static func ports(
        of svc: Service, slices: [EndpointSlice]?, endpoints: Endpoints?, pods: [Pod],
        nodeName: String? = nil, zone: String? = nil, family: IPFamily = .v4
    ) -> [ServicePortState] {
        guard svc.type != .externalName, !svc.isHeadless, let ip = svc.clusterIP(family) else { return [] }
        let slices = slices.map { $0.filter { $0.endpoints.first?.address.family ?? family == family } }
        // Source ranges of this family. When the Service has ranges but none of this family,
        // no source of this family may use its load-balancer IPs: the only range left is the
        // unspecified address, which no packet comes from.
        var ranges = svc.loadBalancerSourceRanges.filter { $0.family == family }
        if ranges.isEmpty && !svc.loadBalancerSourceRanges.isEmpty {
            ranges = [IPPrefix(address: family == .v4 ? IPAddress(0) : IPAddress(v6: 0, 0), length: family.bits)]
        }
        return svc.ports.map { port in
            let spn = ServicePortName(namespace: svc.meta.namespace, name: svc.meta.name, port: port.name, proto: port.proto)
            var eps: [(EndpointAddress, node: String?)]
            // kube-proxy's fallback for Local policies, per node: with no ready endpoint here,
            // this node's serving-and-terminating ones serve Local traffic, even while other
            // nodes have ready endpoints for Cluster traffic.
            var localFallback: [EndpointAddress] = []
            var anyReady = true
            if let slices {
                let (ready, terminating) = Self.classified(from: slices, for: port)
                eps = ready.isEmpty ? terminating : ready
                anyReady = !ready.isEmpty
                if svc.externalTrafficPolicyLocal || svc.internalTrafficPolicyLocal, let nodeName, anyReady,
                    !ready.contains(where: { $0.node == nodeName })
                {
                    localFallback = terminating.filter { $0.node == nodeName }.map(\.0)
                }
                // Topology hints, as kube-proxy uses them: only when every endpoint has zone
                // hints and some are for this node's zone; then only those serve.
                if let zone {
                    let hinted = Self.endpoints(from: slices, for: port, zone: zone)
                    if !hinted.isEmpty { eps = hinted }
                }
            } else if let endpoints {
                eps = Self.endpoints(from: endpoints, for: port).filter { $0.0.ip.family == family }
            } else if let selector = svc.selector, !selector.isEmpty {
                eps = Self.endpoints(fromPods: pods, selector: selector, for: port, family: family)
            } else {
                eps = []
            }
            var frontends = [Frontend(kind: .clusterIP, ip: ip, port: port.port)]
            frontends += Array(Set(svc.externalIPs.filter { $0.family == family })).sorted().map {
                Frontend(kind: .externalIP, ip: $0, port: port.port)
            }
            frontends += Array(Set(svc.loadBalancerIPs.filter { $0.family == family })).sorted().map {
                Frontend(kind: .loadBalancer, ip: $0, port: port.port)
            }
            let hasNodePort = svc.type == .nodePort || svc.type == .loadBalancer
            var local = Set<EndpointAddress>(), all = Set<EndpointAddress>()
            for (ep, node) in eps {
                all.insert(ep)
                if let nodeName, node == nodeName { local.insert(ep) }
            }
            // Serving-and-terminating, so never among `all` (ready) here.
            let fallback = Set(localFallback).sorted()
            var state = ServicePortState(
                name: spn, frontends: frontends, endpoints: fallback + local.sorted() + all.subtracting(local).sorted(),
                nodePort: hasNodePort ? port.nodePort : nil,
                sourceRanges: svc.type == .loadBalancer ? ranges : [])
            state.localEndpointCount = fallback.isEmpty ? local.count : fallback.count
            state.clusterStart = fallback.count
            state.localReadyCount = anyReady ? local.count : 0
            state.externalLocal = svc.externalTrafficPolicyLocal && (hasNodePort || !frontends.dropFirst().isEmpty)
            state.internalLocal = svc.internalTrafficPolicyLocal
            state.healthCheckNodePort = svc.healthCheckNodePort
            state.affinityTimeout = svc.affinityTimeout
            state.clusterIPAllocated = svc.clusterIPsAllocated
            state.nodePortAllocated = hasNodePort && port.nodePortAllocated
            return state
        }
    }

    /// Ready endpoints; when none is ready, the serving and terminating ones (kube-proxy's
    /// fallback, so connections drain instead of failing during a rollout).
    /// The endpoints hinted for `zone`, or none when hints are missing from any usable endpoint.
    static func endpoints(from slices: [EndpointSlice], for port: ServicePort, zone: String) -> [(EndpointAddress, node: String?)] {
        let usable = Set(endpoints(from: slices, for: port).map(\.0))
        var out: [(EndpointAddress, node: String?)] = []
        for slice in slices {
            guard let p = slice.ports.first(where: { $0.name == port.name && $0.proto == port.proto }) else { continue }
            for ep in slice.endpoints {
                let ip = ep.address
                guard usable.contains(EndpointAddress(ip: ip, port: p.port)) else { continue }
                guard let hints = ep.zoneHints else { return [] }
                if hints.contains(zone) { out.append((EndpointAddress(ip: ip, port: p.port), node: ep.nodeName)) }
            }
        }
        return out
    }

    static func endpoints(from slices: [EndpointSlice], for port: ServicePort) -> [(EndpointAddress, node: String?)] {
        let (ready, terminating) = classified(from: slices, for: port)
        return ready.isEmpty ? terminating : ready
    }

    /// The ready endpoints, and the serving-and-terminating ones.
    static func classified(from slices: [EndpointSlice], for port: ServicePort)
        -> (ready: [(EndpointAddress, node: String?)], terminating: [(EndpointAddress, node: String?)])
    {
        var ready: [(EndpointAddress, node: String?)] = [], terminating: [(EndpointAddress, node: String?)] = []
        for slice in slices {
            guard let p = slice.ports.first(where: { $0.name == port.name && $0.proto == port.proto }) else { continue }
            for ep in slice.endpoints {
                let addr = (EndpointAddress(ip: ep.address, port: p.port), node: ep.nodeName)
                if ep.conditions.ready {
                    ready.append(addr)
                } else if ep.conditions.serving && ep.conditions.terminating {
                    terminating.append(addr)
                }
            }
        }
        return (ready, terminating)
    }

    static func endpoints(from e: Endpoints, for port: ServicePort) -> [(EndpointAddress, node: String?)] {
        e.subsets.flatMap { subset -> [(EndpointAddress, node: String?)] in
            guard let p = subset.ports.first(where: { $0.name == port.name && $0.proto == port.proto }) else { return [] }
            return subset.addresses.map { (EndpointAddress(ip: $0, port: p.port), node: nil) }
        }
    }

    /// The endpoints controller's view: running, ready, not terminating pods whose labels match,
    /// with a named target port resolved against each pod's container ports.
    static func endpoints(
        fromPods pods: [Pod], selector: [String: String], for port: ServicePort,
        family: IPFamily
    ) -> [(EndpointAddress, node: String?)] {
        pods.compactMap { pod -> (EndpointAddress, node: String?)? in
            guard let ip = pod.podIPs.first(where: { $0.family == family }), pod.ready, !pod.terminating, pod.phase == "Running",
                selector.allSatisfy({ pod.meta.labels[$0.key] == $0.value })
            else { return nil }
            switch port.targetPort {
            case .int(let n):
                return (EndpointAddress(ip: ip, port: UInt16(n)), node: pod.nodeName)
            case .string(let name):
                guard let cp = pod.containerPorts.first(where: { $0.name == name && $0.proto == port.proto }) else { return nil }
                return (EndpointAddress(ip: ip, port: cp.containerPort), node: pod.nodeName)
            }
        }
    }
}
