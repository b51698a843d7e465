package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
)

// RoleOID is the certificate extension that carries a client's role under
// the Modbus/TCP Security specification.
var RoleOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 50316, 802, 1}

// errNoRole is returned for a certificate without a role extension.
var errNoRole = errors.New("client certificate carries no Modbus/TCP Security role")

// certRole extracts the role from a verified client certificate. The
// specification encodes it as an ASN.1 UTF8String.
func certRole(cert *x509.Certificate) (string, error) {
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(RoleOID) {
			continue
		}
		var role string
		if _, err := asn1.UnmarshalWithParams(ext.Value, &role, "utf8"); err != nil {
			return "", errors.New("client certificate role extension is not a UTF8String")
		}
		return role, nil
	}
	return "", errNoRole
}

// peerRole returns the role of a TLS client whose handshake completed.
func peerRole(c *tls.Conn) (string, error) {
	st := c.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return "", errors.New("client sent no certificate")
	}
	return certRole(st.PeerCertificates[0])
}
