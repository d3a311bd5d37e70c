//! Size baseline for the spike: the hashing the main crate already links (sha2, md-5, crc-fast),
//! without HTTP, TLS or the engine. `rust-engine` minus this is the engine's size.

use sha2::Digest;

fn main() {
    let path = std::env::args().nth(1).expect("a file");
    let data = std::fs::read(path).expect("readable");
    println!(
        "{:?} {:?} {:016x}",
        md5::Md5::digest(&data).as_slice(),
        sha2::Sha256::digest(&data).as_slice(),
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &data)
    );
}
