using static Vmm.Virtio.Spec.VirtqueueLayout;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The driver's indirect descriptor tables (virtio 1.2, 2.7.5.3 and 2.8.7): one per ring slot
/// (split head or packed buffer id), kept and reused, so a warm queue makes no allocator call
/// per request. A table grows when a chain needs more entries than it has.
/// </summary>
internal sealed class IndirectTables
{
    private readonly GuestMemoryAllocator _allocator;
    private readonly ulong[] _table;
    private readonly uint[] _capacity;

    public IndirectTables(GuestMemoryAllocator allocator, ushort slots)
    {
        _allocator = allocator;
        _table = new ulong[slots];
        _capacity = new uint[slots];
    }

    /// <summary>The guest address of slot <paramref name="slot"/>'s table, with room for at least <paramref name="entries"/> descriptors.</summary>
    public ulong Ensure(ushort slot, int entries)
    {
        if (_capacity[slot] < entries)
        {
            if (_capacity[slot] != 0)
            {
                _allocator.Free(_table[slot]);
            }

            int capacity = Math.Max(entries, 4);
            _table[slot] = _allocator.Allocate((ulong)capacity * DescriptorSize, DescriptorSize);
            _capacity[slot] = (uint)capacity;
        }

        return _table[slot];
    }
}
