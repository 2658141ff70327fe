import NFTModel

/// Kubernetes name rules (apimachinery's validation), returning why a name fails or nil.
enum Validation {
    /// Why `ip` cannot be a Service's, an external or load-balancer IP, or an endpoint, as the
    /// API server's `ValidateNonSpecialIP` says; nil when it can. NAT to or from these takes
    /// over the node's own traffic (`externalIPs: [127.0.0.1]` catches `curl 127.0.0.1:8080`
    /// on the node).
    static func specialAddress(_ ip: IPAddress) -> String? {
        if ip.isUnspecified { return "is the unspecified address" }
        if ip.isLoopback { return "is a loopback address" }
        if ip.family == .v4 {
            if ip == broadcast { return "is the broadcast address" }
            if linkLocal4.contains(ip) { return "is a link-local address" }
            if multicast4.contains(ip) { return "is a multicast address" }
        } else {
            if mapped6.contains(ip) { return "is an IPv4-mapped IPv6 address (write the IPv4 address)" }
            if linkLocal6.contains(ip) { return "is a link-local address" }
            if multicast6.contains(ip) { return "is a multicast address" }
        }
        return nil
    }

    // Parsed once: parsing them on every address was 8% of decoding 100,000 endpoints.
    static let broadcast = IPAddress("255.255.255.255")!
    static let linkLocal4 = IPPrefix("169.254.0.0/16")!, multicast4 = IPPrefix("224.0.0.0/4")!
    static let mapped6 = IPPrefix("::ffff:0.0.0.0/96")!, linkLocal6 = IPPrefix("fe80::/10")!, multicast6 = IPPrefix("ff00::/8")!

    static func isLowerAlnum(_ c: Character) -> Bool { c.isASCII && (c.isLowercase || c.isNumber) }

    /// RFC 1123 label: at most 63 of [a-z0-9-], starting and ending alphanumeric.
    static func dns1123Label(_ s: String) -> String? {
        if s.isEmpty { return "must not be empty" }
        // Bytes, not Characters: this runs on every name of every object.
        let u = s.utf8
        func alnum(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) }
        if u.count > 63 { return "must be no more than 63 characters" }
        guard u.allSatisfy({ alnum($0) || $0 == 0x2D }), alnum(u.first!), alnum(u.last!) else {
            return "must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        }
        return nil
    }

    /// RFC 1035 label: a DNS-1123 label that starts with a letter.
    static func dns1035Label(_ s: String) -> String? {
        if let why = dns1123Label(s) { return why }
        guard let f = s.first, f.isLetter else { return "must start with a lower case letter" }
        return nil
    }

    /// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
    static func dns1123Subdomain(_ s: String) -> String? {
        if s.isEmpty { return "must not be empty" }
        if s.count > 253 { return "must be no more than 253 characters" }
        for part in s.split(separator: ".", omittingEmptySubsequences: false) {
            if dns1123Label(String(part)) != nil {
                return
                    "must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            }
        }
        return nil
    }

    /// IANA service name (a named port): at most 15 of [a-z0-9-], at least one letter, no "--",
    /// no leading or trailing '-'.
    static func ianaServiceName(_ s: String) -> String? {
        if s.isEmpty { return "must not be empty" }
        if s.count > 15 { return "must be no more than 15 characters" }
        guard s.allSatisfy({ isLowerAlnum($0) || $0 == "-" }) else { return "must contain only lower case alphanumeric characters or '-'" }
        if !s.contains(where: \.isLetter) { return "must contain at least one letter" }
        if s.contains("--") { return "must not contain consecutive hyphens" }
        if s.first == "-" || s.last == "-" { return "must not begin or end with a hyphen" }
        return nil
    }
}
