//! interceptor's kernel programs: one module per hook, the decisions in the shared library.
#![no_std]
#![no_main]

mod connect4;
mod getpeername4;
mod getsockopt;
mod maps;
mod recvmsg4;
mod redirect4;
mod sendmsg4;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
