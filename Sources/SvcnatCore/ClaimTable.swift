/// Every frontend programmed and the Service holding it, with the reverse index, so a partial
/// sync replaces one Service's claims in time proportional to that Service's frontends (a copy
/// or a filter of the whole table would cost O(Services) on every change).
struct ClaimTable {
    private(set) var holder: [String: String] = [:]
    private var byService: [String: Set<String>] = [:]

    init(_ holder: [String: String] = [:]) {
        self.holder = holder
        for (frontend, service) in holder { byService[service, default: []].insert(frontend) }
    }

    func claims(of service: String) -> Set<String> { byService[service] ?? [] }

    /// `service` now holds exactly `frontends`.
    mutating func replace(_ service: String, with frontends: Set<String>) {
        for k in byService[service] ?? [] where holder[k] == service { holder[k] = nil }
        for k in frontends { holder[k] = service }
        byService[service] = frontends.isEmpty ? nil : frontends
    }
}
