@testable import AgentClient
import Testing
import SwiftASN1
import X509

/// How the proxy tunnel matches the agent's name or address against its certificate.
@Suite("agent certificate names (tunnel)")
struct SubjectAltNameCheckTests {
    @Test("DNS names: equal ignoring case and a final dot; * stands for exactly the leftmost label, and not over two-label names")
    func dnsNames() {
        #expect(SubjectAltNameCheck.dnsName("agent-1.edge.example", matches: "agent-1.edge.example"))
        #expect(SubjectAltNameCheck.dnsName("Agent-1.Edge.Example.", matches: "agent-1.edge.example"))
        #expect(SubjectAltNameCheck.dnsName("agent-1.edge.example", matches: "*.edge.example"))
        #expect(!SubjectAltNameCheck.dnsName("a.agent-1.edge.example", matches: "*.edge.example"), "one label only")
        #expect(!SubjectAltNameCheck.dnsName("edge.example", matches: "*.edge.example"))
        #expect(!SubjectAltNameCheck.dnsName("example.com", matches: "*.com"), "no wildcard over a two-label name")
        #expect(!SubjectAltNameCheck.dnsName("agent-1.edge.example", matches: "agent-1.edge"))
        #expect(!SubjectAltNameCheck.dnsName("agent-1..example", matches: "agent-1..example"))
    }

    @Test("an IP address matches only an IP entry; a name only a DNS entry")
    func kinds() throws {
        let names = SubjectAlternativeNames([
            .dnsName("agent.example"),
            .ipAddress(ASN1OctetString(contentBytes: [10, 0, 0, 5])),
        ])
        #expect(SubjectAltNameCheck.matches(names, host: "10.0.0.5"))
        #expect(SubjectAltNameCheck.matches(names, host: "agent.example"))
        #expect(!SubjectAltNameCheck.matches(names, host: "10.0.0.6"))
        #expect(!SubjectAltNameCheck.matches(names, host: "127.0.0.1"))
        #expect(!SubjectAltNameCheck.matches(SubjectAlternativeNames([.ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))]), host: "localhost"),
                "a name is not taken for an address it may resolve to")
    }
}
