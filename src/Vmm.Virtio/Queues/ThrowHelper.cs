using System.Diagnostics.CodeAnalysis;

namespace Vmm.Virtio.Queues;

/// <summary>
/// Throws for the per-descriptor checks, kept out of line so the hot ring walks stay small and
/// inlinable (the System.IO.Pipelines ThrowHelper pattern).
/// </summary>
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void ThrowChainTooLong(int size) =>
        throw new VirtqueueException($"Descriptor chain is longer than {size} descriptors (the queue size, plus one indirect table of at most {DeviceQueue.MaxIndirectDescriptors}).");

    [DoesNotReturn]
    public static void ThrowBufferOutsideMemory(ulong address, ulong length) =>
        throw new VirtqueueException($"Descriptor buffer [0x{address:x}, +0x{length:x}) is not inside guest memory.");

    [DoesNotReturn]
    public static void ThrowReadableAfterWritable() =>
        throw new VirtqueueException("A device-readable descriptor follows a device-writable one (virtio 1.2, 2.7.4.2).");

    [DoesNotReturn]
    public static void ThrowAvailIndexJump(ushort from, ushort to, int size) =>
        throw new VirtqueueException($"Available index moved from {from} to {to}, more than the queue size {size} (virtio 1.2, 2.7.6).");

    [DoesNotReturn]
    public static void ThrowChainLoop(ushort head, uint tableEntries) =>
        throw new VirtqueueException($"Descriptor chain from head {head} loops or is longer than its table ({tableEntries} entries).");

    [DoesNotReturn]
    public static void ThrowNextOutOfTable(ushort index, ushort next, uint tableEntries) =>
        throw new VirtqueueException($"Descriptor {index} chains to {next}, beyond its table of {tableEntries} entries.");
}
