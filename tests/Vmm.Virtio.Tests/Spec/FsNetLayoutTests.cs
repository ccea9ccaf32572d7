using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using NUnit.Framework;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Tests.Spec;

/// <summary>The wire structures of FUSE (fuse.h 7.36) and virtio-net/virtio-fs have the sizes and offsets of the C definitions.</summary>
[TestFixture]
public sealed class FsNetLayoutTests
{
    private static IEnumerable<TestCaseData> Sizes()
    {
        TestCaseData Size<T>(int size)
            where T : unmanaged => new TestCaseData(Unsafe.SizeOf<T>(), size).SetName($"{typeof(T).Name}_is_{size}_bytes");

        yield return Size<FuseInHeader>(40);
        yield return Size<FuseOutHeader>(16);
        yield return Size<FuseInitIn>(64);
        yield return Size<FuseInitOut>(64);
        yield return Size<FuseAttr>(88);
        yield return Size<FuseEntryOut>(128);
        yield return Size<FuseForgetIn>(8);
        yield return Size<FuseGetattrIn>(16);
        yield return Size<FuseAttrOut>(104);
        yield return Size<FuseMkdirIn>(8);
        yield return Size<FuseRenameIn>(8);
        yield return Size<FuseOpenIn>(8);
        yield return Size<FuseCreateIn>(16);
        yield return Size<FuseOpenOut>(16);
        yield return Size<FuseReleaseIn>(24);
        yield return Size<FuseFlushIn>(24);
        yield return Size<FuseReadIn>(40);
        yield return Size<FuseWriteIn>(40);
        yield return Size<FuseWriteOut>(8);
        yield return Size<FuseFsyncIn>(16);
        yield return Size<FuseStatfsOut>(80);
        yield return Size<FuseDirent>(24);
        yield return Size<FuseDirentPlus>(152);
        yield return Size<VirtioNetHeader>(12);
    }

    [TestCaseSource(nameof(Sizes))]
    public void Structure_size_matches_the_c_definition(int actual, int expected) => Assert.That(actual, Is.EqualTo(expected));

    [Test]
    public void Field_offsets_match_the_c_definition()
    {
        Assert.That(Marshal.OffsetOf<FuseInHeader>(nameof(FuseInHeader.Unique)), Is.EqualTo((nint)8));
        Assert.That(Marshal.OffsetOf<FuseInHeader>(nameof(FuseInHeader.Pid)), Is.EqualTo((nint)32));
        Assert.That(Marshal.OffsetOf<FuseInitOut>(nameof(FuseInitOut.MaxWrite)), Is.EqualTo((nint)20));
        Assert.That(Marshal.OffsetOf<FuseInitOut>(nameof(FuseInitOut.MaxPages)), Is.EqualTo((nint)28));
        Assert.That(Marshal.OffsetOf<FuseAttr>(nameof(FuseAttr.Mode)), Is.EqualTo((nint)60));
        Assert.That(Marshal.OffsetOf<FuseEntryOut>(nameof(FuseEntryOut.Attr)), Is.EqualTo((nint)40));
        Assert.That(Marshal.OffsetOf<FuseDirentPlus>(nameof(FuseDirentPlus.Dirent)), Is.EqualTo((nint)128));
        Assert.That(Marshal.OffsetOf<VirtioNetHeader>(nameof(VirtioNetHeader.NumBuffers)), Is.EqualTo((nint)10));
    }

    [Test]
    public void Fs_config_round_trips_and_a_tag_filling_the_field_has_no_terminator()
    {
        Span<byte> config = stackalloc byte[VirtioFsConfig.Size];
        string full = new('t', VirtioFsConfig.TagSize);
        new VirtioFsConfig(full, 3, true).Write(config);
        Assert.That(VirtioFsConfig.Read(config), Is.EqualTo(new VirtioFsConfig(full, 3, true)));

        new VirtioFsConfig("share", 1, true).Write(config);
        Assert.That(config[5], Is.Zero, "NUL-padded");
        Assert.That(VirtioFsConfig.Read(config).Tag, Is.EqualTo("share"));
    }

    [Test]
    public void Fs_config_tag_that_is_not_utf8_is_flagged()
    {
        byte[] config = new byte[VirtioFsConfig.Size];
        config[0] = 0xff;
        config[1] = (byte)'x';
        VirtioFsConfig read = VirtioFsConfig.Read(config);
        Assert.That(read.TagIsValidUtf8, Is.False);
        Assert.That(read.Tag, Does.EndWith("x"));
    }

    [Test]
    public void Net_config_round_trips()
    {
        Span<byte> config = stackalloc byte[VirtioNetConfig.Size];
        var written = new VirtioNetConfig([1, 2, 3, 4, 5, 6], VirtioNet.VIRTIO_NET_S_LINK_UP, 2, 9000);
        written.Write(config);
        VirtioNetConfig read = VirtioNetConfig.Read(config);
        Assert.That(read.Mac, Is.EqualTo(written.Mac));
        Assert.That((read.Status, read.MaxVirtqueuePairs, read.Mtu), Is.EqualTo(((ushort)1, (ushort)2, (ushort)9000)));
    }
}
