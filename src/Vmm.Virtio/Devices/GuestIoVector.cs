using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vmm.Core.Memory;
using Vmm.Virtio.Queues;

namespace Vmm.Virtio.Devices;

/// <summary>
/// A byte range of a descriptor chain's readable or writable buffers, seen as one stream
/// (virtio 1.2, 2.6.4 "Message Framing": a device must not assume how the driver split a
/// request into descriptors), cut into pieces that each lie inside one guest memory region so
/// that file I/O can go straight to and from guest RAM (preadv / pwritev, no bounce buffer).
/// </summary>
/// <remarks>
/// One instance per worker thread, reused for every request: no allocation on the data path
/// once the pools have grown. The memories it hands out are valid while the regions they point
/// into stay mapped, which the queue guarantees while it runs.
/// </remarks>
internal sealed class GuestIoVector
{
    /// <summary>Largest piece handed to the kernel in one iovec; keeps every length an int.</summary>
    private const int MaxPiece = 1 << 30;

    [ThreadStatic]
    private static GuestIoVector? t_current;

    private readonly List<GuestMemoryManager> _managers = [];
    private readonly List<Memory<byte>> _memories = [];
    private readonly List<ReadOnlyMemory<byte>> _readOnlyMemories = [];

    /// <summary>The calling thread's instance, emptied.</summary>
    public static GuestIoVector Rent()
    {
        GuestIoVector vector = t_current ??= new GuestIoVector();
        vector.Clear();
        return vector;
    }

    public int Count => _memories.Count;

    public IReadOnlyList<Memory<byte>> Memories => _memories;

    public IReadOnlyList<ReadOnlyMemory<byte>> ReadOnlyMemories => _readOnlyMemories;

    public void Clear()
    {
        _memories.Clear();
        _readOnlyMemories.Clear();
    }

    /// <summary>
    /// Appends [offset, offset + length) of the chain's writable (or readable) stream. Throws
    /// <see cref="GuestMemoryException"/> when a piece is outside guest memory and
    /// <see cref="ArgumentOutOfRangeException"/> when the stream is shorter than asked.
    /// </summary>
    public void Add(GuestMemory memory, IReadOnlyList<DescriptorSegment> segments, bool deviceWritable, ulong offset, ulong length)
    {
        for (int i = 0; i < segments.Count && length > 0; i++)
        {
            DescriptorSegment segment = segments[i];
            if (segment.IsDeviceWritable != deviceWritable)
            {
                continue;
            }

            if (offset >= segment.Length)
            {
                offset -= segment.Length;
                continue;
            }

            ulong address = segment.Address + offset;
            ulong take = Math.Min(segment.Length - offset, length);
            offset = 0;
            length -= take;
            while (take > 0)
            {
                GuestMemoryRegion region = memory.FindRegion(address, 1) ?? throw new GuestMemoryException(address, take);
                ulong inRegion = region.LastAddress - address + 1;
                int piece = (int)Math.Min(Math.Min(take, inRegion == 0 ? ulong.MaxValue : inRegion), MaxPiece);
                Append(memory.GetSpan(address, piece));
                address += (ulong)piece;
                take -= (ulong)piece;
            }
        }

        if (length > 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "The chain holds fewer bytes than requested.");
        }
    }

    /// <summary>Copies [offset, offset + destination.Length) of the chain's stream into <paramref name="destination"/>.</summary>
    public static void Copy(GuestMemory memory, IReadOnlyList<DescriptorSegment> segments, bool deviceWritable, ulong offset, Span<byte> destination)
    {
        for (int i = 0; i < segments.Count && !destination.IsEmpty; i++)
        {
            DescriptorSegment segment = segments[i];
            if (segment.IsDeviceWritable != deviceWritable)
            {
                continue;
            }

            if (offset >= segment.Length)
            {
                offset -= segment.Length;
                continue;
            }

            int take = (int)Math.Min(segment.Length - offset, (ulong)destination.Length);
            memory.Read(segment.Address + offset, destination[..take]);
            destination = destination[take..];
            offset = 0;
        }

        if (!destination.IsEmpty)
        {
            throw new ArgumentOutOfRangeException(nameof(destination), "The chain holds fewer bytes than requested.");
        }
    }

    private unsafe void Append(Span<byte> span)
    {
        int index = _memories.Count;
        if (index == _managers.Count)
        {
            _managers.Add(new GuestMemoryManager());
        }

        GuestMemoryManager manager = _managers[index];
        manager.Reset((byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(span)), span.Length);
        _memories.Add(manager.Memory);
        _readOnlyMemories.Add(manager.Memory);
    }

    /// <summary>A Memory over mapped guest RAM, which never moves (pinning is a no-op).</summary>
    private sealed unsafe class GuestMemoryManager : MemoryManager<byte>
    {
        private byte* _pointer;
        private int _length;

        public void Reset(byte* pointer, int length)
        {
            _pointer = pointer;
            _length = length;
        }

        public override Span<byte> GetSpan() => new(_pointer, _length);

        public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
