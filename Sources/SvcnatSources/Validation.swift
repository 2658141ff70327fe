/// Kubernetes name rules (apimachinery's validation), returning why a name fails or nil.
enum Validation {
    static func isLowerAlnum(_ c: Character) -> Bool { c.isASCII && (c.isLowercase || c.isNumber) }

    /// RFC 1123 label: at most 63 of [a-z0-9-], starting and ending alphanumeric.
    static func dns1123Label(_ s: String) -> String? {
        if s.isEmpty { return "must not be empty" }
        if s.count > 63 { return "must be no more than 63 characters" }
        guard s.allSatisfy({ isLowerAlnum($0) || $0 == "-" }), isLowerAlnum(s.first!), isLowerAlnum(s.last!) else {
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
