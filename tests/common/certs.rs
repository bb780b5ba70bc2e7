//! Test certificates, made by the `openssl` CLI in a temp dir for each test: a CA, a server
//! certificate for `127.0.0.1` and `localhost` (server and client use, as etcd's gateway dials
//! its own port with it), a client certificate signed by the same CA (its key in SEC1, `BEGIN
//! EC PRIVATE KEY`), and a second, unrelated CA. Valid for two days. [`Certs::generate`]
//! prints a SKIP line and returns `None` when `openssl` is missing; [`Certs::another_server`]
//! makes more server certificates from the same CA (a certificate swap on reload), and
//! [`Certs::server_for`] ones for given host names (SNI routing).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempDir;

/// The files of one test's certificates, removed on drop.
pub struct Certs {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed neither.
    pub other_ca: PathBuf,
    dir: TempDir,
}

impl Certs {
    /// Make the certificates for `test` (its name keeps temp dirs apart).
    pub fn generate(test: &str) -> Option<Certs> {
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("SKIP {test}: the openssl CLI is missing");
            return None;
        }
        let dir = TempDir::new(&format!("certs-{test}"));
        let at = |name: &str| dir.0.join(name);
        let certs = Certs {
            ca: at("ca.pem"),
            server_cert: at("server.pem"),
            server_key: at("server.key"),
            client_cert: at("client.pem"),
            client_key: at("client.key"),
            other_ca: at("other-ca.pem"),
            dir,
        };
        certs.make_ca("ca", "warren test CA");
        certs.make_ca("other-ca", "an unrelated CA");
        certs.make_leaf(
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        certs.make_leaf("client", "warren", "extendedKeyUsage=clientAuth\n");
        // The client's key in SEC1 (`BEGIN EC PRIVATE KEY`) rather than PKCS#8.
        let key = certs.client_key.display().to_string();
        openssl(&certs.dir.0, &["ec", "-in", &key, "-out", &key]);
        Some(certs)
    }

    /// One more server certificate for `127.0.0.1` and `localhost`, signed by the same CA:
    /// `NAME.pem` and `NAME.key` in the directory.
    pub fn another_server(&self, name: &str) -> (PathBuf, PathBuf) {
        self.make_leaf(
            name,
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        (
            self.dir.0.join(format!("{name}.pem")),
            self.dir.0.join(format!("{name}.key")),
        )
    }

    /// A server certificate for the DNS names `hosts` (`*.` wildcards allowed), signed by
    /// the same CA: `NAME.pem` and `NAME.key` in the directory.
    pub fn server_for(&self, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = hosts.iter().map(|h| format!("DNS:{h}")).collect();
        self.make_leaf(
            name,
            hosts[0],
            &format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        );
        (
            self.dir.0.join(format!("{name}.pem")),
            self.dir.0.join(format!("{name}.key")),
        )
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    fn make_ca(&self, name: &str, subject: &str) {
        openssl(
            &self.dir.0,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={subject}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }

    /// `NAME.key` and `NAME.pem`, signed by `ca`, with the extensions in `extensions`.
    fn make_leaf(&self, name: &str, common_name: &str, extensions: &str) {
        let ext = self.dir.0.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"),
        )
        .unwrap();
        openssl(
            &self.dir.0,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={common_name}"),
            ],
        );
        openssl(
            &self.dir.0,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext.display().to_string(),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
