using NUnit.Framework;
using Vmm.VhostUser.Protocol;

namespace Vmm.VhostUser.Tests.Protocol;

[TestFixture]
public class ShMemConfigTests
{
    [Test]
    public void Full_reply_round_trips_and_fits_the_reply_rule()
    {
        var payload = new byte[VhostUserShMemConfig.FullPayloadSize];
        Assert.That(VhostUserShMemConfig.Write(payload, [0x1000, 0, 0x20_0000]), Is.EqualTo(2056));
        Assert.That(VhostUserShMemConfig.ReadSizes(payload), Is.EqualTo(new ulong[] { 0x1000, 0, 0x20_0000 }));
        Assert.That(VhostUserPayloadRules.ForReply(VhostUserRequest.GET_SHMEM_CONFIG).Allows(2056), Is.True);
    }

    [Test]
    public void Reply_claiming_more_regions_than_it_carries_is_rejected()
    {
        var payload = new byte[8 + 16];
        new VhostUserMemoryHeader(3).Write(payload);
        Assert.That(() => VhostUserShMemConfig.ReadSizes(payload), Throws.TypeOf<VhostUserProtocolException>());
        Assert.That(() => VhostUserShMemConfig.ReadSizes(new byte[13]), Throws.TypeOf<VhostUserProtocolException>());
    }
}
