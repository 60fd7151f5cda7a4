/* flowc_startup.c - start-up code for Cortex-M4 firmware: vector table, reset handler, semihosting.
 *
 * What QEMU's mps2-an386 machine (and a bare Cortex-M4) needs before main: the
 * vector table at address 0 (initial stack pointer, then the handlers), .data
 * copied from flash, .bss zeroed, the FPU switched on (the code is compiled
 * for hard float, and the first float instruction would fault otherwise),
 * newlib's semihosting file handles opened (without them printf prints
 * nothing) and its constructors run. The program's exit status goes back to
 * the host through semihosting, so QEMU exits when main returns. */
#include <stdint.h>
#include <stdlib.h>

/* Symbols of the linker script (flowc_cortex_m4.ld). */
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;

extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);
extern void _exit(int status);
int main(void);

void Reset_Handler(void);
void Fault_Handler(void);

/* newlib's __libc_init_array calls these; the C runtime files that would
 * define them are left out by -nostartfiles. */
void _init(void) {}
void _fini(void) {}

/* A fault ends the run with status 99 instead of hanging the emulator. */
void Fault_Handler(void) { _exit(99); }

typedef void (*handler)(void);

/* Entry 0 is the initial stack pointer, the others are handlers: NMI, hard
 * fault, memory management, bus and usage faults. */
__attribute__((section(".isr_vector"), used)) static const uintptr_t vector_table[] = {
    (uintptr_t)&_estack,      (uintptr_t)Reset_Handler, (uintptr_t)Fault_Handler,
    (uintptr_t)Fault_Handler, (uintptr_t)Fault_Handler, (uintptr_t)Fault_Handler,
    (uintptr_t)Fault_Handler,
};

void Reset_Handler(void) {
  uint32_t *src = &_sidata, *dst = &_sdata;
  while (dst < &_edata) *dst++ = *src++;
  for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
  /* CPACR (0xE000ED88): full access to coprocessors 10 and 11, the FPU. */
  *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;
  __asm volatile("dsb\n\tisb" ::: "memory");
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}
