import NFTModel
import SvcnatModel

/// Answers to "why does my Service have no endpoints?": what a set of manifests leaves a
/// Service without, said with the file and the object. Pure; manifests mode only (the API
/// server allocates what manifests lack, and its controllers write the EndpointSlices).
public enum ManifestReview {
    /// The warnings for one Service: `hasEndpointObjects` when EndpointSlices or Endpoints are
    /// given for it (its endpoints come from them, not from Pods), `pods` the Pods of its
    /// namespace that its selector selects.
    public static func warnings(
        for s: Service, file: String, hasEndpointObjects: Bool, pods: [Pod], allocating: Bool
    ) -> [Warning] {
        func warn(_ text: String) -> Warning { Warning(text: "\(file): Service \(s.meta.key): \(text)") }
        var out: [Warning] = []
        if s.lacksClusterIP && !allocating {
            out.append(
                warn(
                    "spec.clusterIP is not set (the API server allocates it; give it, or --allocate with --service-cidr); "
                        + "the Service gets no rules"))
            return out
        }
        guard !s.isHeadless, s.type != .externalName else { return out }
        if s.wantsNodePorts && !allocating {
            for (i, p) in s.ports.enumerated() where p.nodePort == nil {
                out.append(
                    warn(
                        "spec.ports[\(i)].nodePort is not set (the API server allocates it; give it, or --allocate); "
                            + "port \(p.port)/\(p.proto.rawValue) gets no node port"))
            }
        }
        guard let selector = s.selector, !selector.isEmpty, !hasEndpointObjects else { return out }
        if pods.isEmpty {
            let text = selector.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            out.append(
                warn(
                    "spec.selector \(text) matches no Pod in namespace \(s.meta.namespace); Deployments and other workloads "
                        + "are not expanded: give Pods or EndpointSlices; the Service has no endpoints"))
            return out
        }
        for (i, p) in s.ports.enumerated() {
            guard case .string(let name) = p.targetPort else { continue }
            let has = pods.contains { pod in pod.containerPorts.contains { $0.name == name && $0.proto == p.proto } }
            if !has {
                let n = pods.count == 1 ? "the selected Pod" : "the \(pods.count) selected Pods"
                out.append(
                    warn(
                        "spec.ports[\(i)].targetPort \"\(name)\" matches no \(p.proto.rawValue) container port of \(n); "
                            + "port \(p.port)/\(p.proto.rawValue) has no endpoints"))
            }
        }
        return out
    }

    /// The warnings for every Service of `state`; `origins` names each object's file
    /// ("Service ns/name" -> file).
    public static func warnings(_ state: ClusterState, origins: [String: String], allocating: Bool) -> [Warning] {
        var withEndpointObjects = Set<String>()
        for sl in state.endpointSlices { withEndpointObjects.insert("\(sl.meta.namespace)/\(sl.serviceName)") }
        for e in state.endpoints { withEndpointObjects.insert(e.meta.key) }
        // Pods by each label pair: a selector's Pods are among those of its least key's pair.
        var podsByLabel: [String: [Pod]] = [:]
        for p in state.pods { for (k, v) in p.meta.labels { podsByLabel["\(p.meta.namespace)\u{0}\(k)\u{0}\(v)", default: []].append(p) } }
        return state.services.flatMap { s -> [Warning] in
            var selected: [Pod] = []
            if let sel = s.selector, let k = sel.keys.min() {
                selected = (podsByLabel["\(s.meta.namespace)\u{0}\(k)\u{0}\(sel[k]!)"] ?? []).filter { p in
                    sel.allSatisfy { p.meta.labels[$0.key] == $0.value }
                }
            }
            return warnings(
                for: s, file: origins["Service \(s.meta.key)"] ?? "", hasEndpointObjects: withEndpointObjects.contains(s.meta.key),
                pods: selected, allocating: allocating)
        }
    }
}
