using Vmm.Core.Posix;
using Vmm.Core.Tests.Support;

namespace Vmm.Core.Tests.Posix;

[TestFixture]
public sealed class MemFdTests
{
    private const int EPERM = 1;

    [Test]
    public void Created_memfds_are_sealed_against_shrink_grow_and_new_seals()
    {
        using SafeFileDescriptor fd = MemFd.Create("sealed", 8192);

        Assert.That(MemFd.GetSeals(fd), Is.EqualTo(FileSeals.Shrink | FileSeals.Grow | FileSeals.Seal));
        Assert.That(TestFiles.TryResize(fd, 4096), Is.EqualTo(EPERM), "shrink");
        Assert.That(TestFiles.TryResize(fd, 16384), Is.EqualTo(EPERM), "grow");
        Assert.That(MemFd.GetFileSize(fd), Is.EqualTo(8192UL));
    }

    [Test]
    public void A_sealable_peer_memfd_is_sealed_against_shrinking()
    {
        using SafeFileDescriptor fd = TestFiles.SealableMemfd(8192);

        Assert.That(MemFd.TrySealAgainstShrinking(fd), Is.True);
        Assert.That(MemFd.GetSeals(fd) & FileSeals.Shrink, Is.EqualTo(FileSeals.Shrink));
        Assert.That(TestFiles.TryResize(fd, 4096), Is.EqualTo(EPERM));
        Assert.That(TestFiles.TryResize(fd, 16384), Is.Zero, "growing stays the owner's choice");
    }

    [Test]
    public void A_memfd_sealed_by_its_owner_with_F_SEAL_SEAL_counts_as_sealed()
    {
        // QEMU's memory-backend-memfd seals grow, shrink and seal: adding a seal then fails with
        // EPERM, but the file cannot shrink, which is all that matters.
        using SafeFileDescriptor fd = MemFd.Create("owner-sealed", 4096);

        Assert.That(MemFd.TrySealAgainstShrinking(fd), Is.True);
    }

    [Test]
    public void Files_that_cannot_be_sealed_say_so()
    {
        using SafeFileDescriptor unsealable = TestFiles.UnsealableMemfd(4096);
        string path = Path.Combine(Path.GetTempPath(), $"vmm-seal-{Guid.NewGuid():n}");
        File.WriteAllBytes(path, new byte[4096]);
        try
        {
            using SafeFileDescriptor file = TestFiles.Open(path);
            Assert.That(MemFd.TrySealAgainstShrinking(unsealable), Is.False, "memfd without MFD_ALLOW_SEALING");
            Assert.That(MemFd.TrySealAgainstShrinking(file), Is.False, "a file that is not shmem");
            Assert.That(MemFd.GetSeals(file), Is.EqualTo(FileSeals.None));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void The_mapping_page_size_of_a_memfd_is_the_system_page_size()
    {
        using SafeFileDescriptor fd = MemFd.Create("pages", 4096);

        Assert.That(MemFd.GetMappingPageSize(fd), Is.EqualTo((ulong)Environment.SystemPageSize));
    }
}
