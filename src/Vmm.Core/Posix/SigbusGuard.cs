using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vmm.Core.Posix;

/// <summary>
/// Survives a peer truncating a file we have mapped. A MAP_SHARED mapping of a file raises
/// SIGBUS when a page beyond the file's end is touched (mmap(2)), and the .NET runtime turns a
/// SIGBUS in managed code into a fatal error. A back-end maps its front-end's guest memory: a
/// memfd sealed against shrinking cannot be truncated (F_SEAL_SHRINK), but QEMU's
/// memory-backend-file on /dev/shm or hugetlbfs cannot be sealed, so its front-end can shrink
/// it at any time. Mappings of such files are registered here: a SIGBUS inside one maps
/// anonymous zero pages over the faulting page (or huge page), so the access completes on
/// memory that is no longer shared, and the owner is told, on a thread of its own, to drop what
/// uses the mapping (the back-end ends that front-end's connection).
/// </summary>
/// <remarks>
/// A signal handler may only make async-signal-safe calls (signal-safety(7)), which rules out
/// managed code: the handler is a few dozen bytes of machine code (SigbusGuard.x86_64.S, its
/// source) installed with sigaction(2) in front of the runtime's own handler, to which every
/// other SIGBUS is passed on unchanged. It reads a fixed table of registered ranges and makes
/// two system calls (mmap, write); a watcher thread reads the eventfd it writes and calls the
/// registered callbacks. The guard exists on Linux x86-64; elsewhere <see cref="IsAvailable"/>
/// is false and unsealed files must be refused. Nothing changes on the access path: a mapping
/// costs the same guarded or not, until a fault.
/// </remarks>
public static unsafe partial class SigbusGuard
{
    /// <summary>How many mappings can be guarded at once (a back-end maps at most 509 regions and an inflight region per connection).</summary>
    public const int Capacity = 1024;

    private const int SlotsOffset = 32;
    private const int SlotSize = 32;

    private static readonly Lock s_lock = new();
    private static readonly Action?[] s_callbacks = new Action?[Capacity];
    private static readonly ulong[] s_seen = new ulong[Capacity];
    private static readonly Lazy<string?> s_install = new(Install);
    private static byte* s_table;
    private static SafeFileDescriptor? s_notify;
    private static int s_slotsInUse;

    /// <summary>True when the guard is installed (or can be, on first use).</summary>
    public static bool IsAvailable => s_install.Value is null;

    /// <summary>Why the guard is not available, in one sentence; null when it is.</summary>
    public static string? UnavailableReason => s_install.Value;

    /// <summary>
    /// Guards [<paramref name="start"/>, <paramref name="start"/> + <paramref name="length"/>), a
    /// MAP_SHARED mapping whose pages are <paramref name="granule"/> bytes (a power of two: the
    /// huge page size for hugetlbfs). <paramref name="onFault"/> is called on the guard's thread
    /// after a fault in the range was repaired (once per batch of faults). Dispose the
    /// registration before the range is unmapped.
    /// </summary>
    /// <exception cref="InvalidOperationException">The guard is not available, or all <see cref="Capacity"/> slots are in use.</exception>
    public static IDisposable Register(nint start, ulong length, ulong granule, Action onFault)
    {
        ArgumentNullException.ThrowIfNull(onFault);
        ArgumentOutOfRangeException.ThrowIfZero(length);
        if (!ulong.IsPow2(granule) || ((ulong)start & (granule - 1)) != 0)
        {
            throw new ArgumentException($"The range must start on a {granule}-byte page boundary.", nameof(granule));
        }

        if (s_install.Value is { } reason)
        {
            throw new InvalidOperationException(reason);
        }

        lock (s_lock)
        {
            for (int i = 0; i < Capacity; i++)
            {
                ulong* slot = Slot(i);
                if (s_callbacks[i] is not null)
                {
                    continue;
                }

                // The fault count is never reset: a fault of the slot's previous owner that the
                // watcher has not read yet must not be taken for one of the new owner.
                s_seen[i] = Volatile.Read(ref slot[3]);
                s_callbacks[i] = onFault;
                slot[0] = (ulong)start;
                slot[2] = granule;

                // The end goes in last: the handler sees the slot only once it is whole.
                Volatile.Write(ref slot[1], (ulong)start + length);
                if (i >= s_slotsInUse)
                {
                    s_slotsInUse = i + 1;
                    Volatile.Write(ref *(ulong*)(s_table + 16), (ulong)s_slotsInUse);
                }

                return new Registration(i);
            }
        }

        throw new InvalidOperationException($"All {Capacity} guarded mapping slots are in use.");
    }

    private static ulong* Slot(int index) => (ulong*)(s_table + SlotsOffset + (index * SlotSize));

    private static void Unregister(int index)
    {
        lock (s_lock)
        {
            // The end goes first: from here on the handler passes faults in the range on.
            Volatile.Write(ref Slot(index)[1], 0UL);
            s_callbacks[index] = null;
        }
    }

    private static string? Install()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return $"the SIGBUS guard for unsealed memory exists for Linux on x86-64 only, not {RuntimeInformation.OSDescription} on {RuntimeInformation.ProcessArchitecture}";
        }

        Interop.Libc.SigAction previous;
        if (Interop.Libc.Sigaction(Interop.Libc.SIGBUS, null, &previous) != 0)
        {
            return $"sigaction(SIGBUS) failed: {Interop.Describe(Interop.LastErrno)}";
        }

        if (previous.Handler == 0 && !TryDefaultAction(ref previous))
        {
            return "the process has no SIGBUS handler and libc's abort cannot be found to stand in for the default action";
        }

        if ((previous.Flags & Interop.Libc.SA_SIGINFO) == 0 || previous.Handler == 0 || previous.Handler == Interop.Libc.SIG_IGN)
        {
            // The runtime always installs an SA_SIGINFO handler; anything else cannot be chained to
            // faithfully from machine code (SIG_DFL would need the handler reset and the signal raised again).
            return "the process's SIGBUS handler is not the runtime's (not an SA_SIGINFO handler), so the SIGBUS guard cannot chain to it";
        }

        byte[] code = X64Handler();
        nint page = Syscall.mmap(IntPtr.Zero, (ulong)Environment.SystemPageSize, MmapProts.PROT_READ | MmapProts.PROT_WRITE,
            MmapFlags.MAP_PRIVATE | MmapFlags.MAP_ANONYMOUS, -1, 0);
        if (page == Syscall.MAP_FAILED)
        {
            return $"mmap for the SIGBUS guard failed: {Interop.Describe((int)NativeConvert.FromErrno(Stdlib.GetLastError()))}";
        }

        byte* table = (byte*)NativeMemory.AllocZeroed((nuint)(SlotsOffset + (Capacity * SlotSize)));
        SafeFileDescriptor notify;
        try
        {
            notify = EventCounter.Create();
        }
        catch (PosixException e)
        {
            NativeMemory.Free(table);
            Syscall.munmap(page, (ulong)Environment.SystemPageSize);
            return $"the SIGBUS guard's eventfd cannot be created: {e.Message}";
        }

        int patched = PatchTableAddress(code, (ulong)table);
        if (patched != 3)
        {
            throw new InvalidOperationException($"The SIGBUS handler's table address was found {patched} times, not 3.");
        }

        Marshal.Copy(code, 0, page, code.Length);
        if (Syscall.mprotect(page, (ulong)Environment.SystemPageSize, MmapProts.PROT_READ | MmapProts.PROT_EXEC) != 0)
        {
            // W^X policies (SELinux execmem, PaX) refuse executable anonymous memory.
            int errno = (int)NativeConvert.FromErrno(Stdlib.GetLastError());
            NativeMemory.Free(table);
            Syscall.munmap(page, (ulong)Environment.SystemPageSize);
            notify.Dispose();
            return $"the SIGBUS guard's code cannot be made executable (mprotect: {Interop.Describe(errno)})";
        }

        bool added = false;
        notify.DangerousAddRef(ref added); // the handler writes the raw number for the life of the process
        *(nint*)table = previous.Handler;
        *(int*)(table + 8) = notify.DangerousFd;
        *(ulong*)(table + 24) = 1;
        s_table = table;
        s_notify = notify;

        Interop.Libc.SigAction action = previous;
        action.Handler = page;
        action.Flags = previous.Flags | Interop.Libc.SA_SIGINFO;
        if (Interop.Libc.Sigaction(Interop.Libc.SIGBUS, &action, null) != 0)
        {
            return $"sigaction(SIGBUS) failed: {Interop.Describe(Interop.LastErrno)}";
        }

        new Thread(Watch) { IsBackground = true, Name = "sigbus-guard" }.Start();
        return null;
    }

    /// <summary>
    /// SIG_DFL (a native-AOT process: its runtime installs no SIGBUS handler) ends the process on
    /// a SIGBUS. The handler chains to a function, so an unguarded SIGBUS is passed to libc's
    /// abort(3), which is async-signal-safe (signal-safety(7)) and ends the process as surely,
    /// with SIGABRT and a core dump instead of SIGBUS.
    /// </summary>
    private static bool TryDefaultAction(ref Interop.Libc.SigAction previous)
    {
        if (!NativeLibrary.TryLoad("libc.so.6", out nint libc) || !NativeLibrary.TryGetExport(libc, "abort", out nint abort))
        {
            return false;
        }

        previous.Handler = abort;
        previous.Flags |= Interop.Libc.SA_SIGINFO;
        return true;
    }

    private static int PatchTableAddress(byte[] code, ulong table)
    {
        int patched = 0;
        for (int i = 0; i + 10 <= code.Length; i++)
        {
            // movabs $imm64, %rax is 48 b8 imm64.
            if (code[i] == 0x48 && code[i + 1] == 0xb8 && BitConverter.ToUInt64(code, i + 2) == TablePlaceholder)
            {
                BitConverter.TryWriteBytes(code.AsSpan(i + 2), table);
                patched++;
            }
        }

        return patched;
    }

    /// <summary>Reads the handler's eventfd and calls the callbacks of the slots whose fault count moved.</summary>
    private static void Watch()
    {
        SafeFileDescriptor notify = s_notify!;
        while (true)
        {
            try
            {
                EventCounter.WaitReadable(notify, Timeout.Infinite);
                if (!EventCounter.TryRead(notify, out _))
                {
                    continue;
                }

                var due = new List<Action>();
                lock (s_lock)
                {
                    for (int i = 0; i < s_slotsInUse; i++)
                    {
                        ulong faults = Volatile.Read(ref Slot(i)[3]);
                        if (faults != s_seen[i])
                        {
                            s_seen[i] = faults;
                            if (s_callbacks[i] is { } callback)
                            {
                                due.Add(callback);
                            }
                        }
                    }
                }

                foreach (Action callback in due)
                {
                    try
                    {
                        callback();
                    }
                    catch (Exception e)
                    {
                        // A callback's failure is its owner's; the guard goes on for everyone else.
                        System.Diagnostics.Trace.TraceError($"A SIGBUS guard callback failed: {e}");
                    }
                }
            }
            catch (Exception e)
            {
                System.Diagnostics.Trace.TraceError($"The SIGBUS guard's watcher failed: {e}");
            }
        }
    }

    private sealed class Registration(int index) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                Unregister(index);
            }
        }
    }
}
