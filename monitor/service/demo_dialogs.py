"""Short written exchanges (a question and its answer) in the languages beyond the reference corpus's
story: a few records of each in the demo traffic give the status a segment per language (lang=vi, ...).

    from monitor.service.demo_dialogs import DIALOGS
    DIALOGS["vi"][0]   # ('Cho mình hỏi nên tưới cây xương rồng bao lâu một lần?', 'Xương rồng cần rất ít nước: ...')
"""

from __future__ import annotations

DIALOGS: dict[str, tuple[tuple[str, str], ...]] = {
    "vi": (
        (
            "Cho mình hỏi nên tưới cây xương rồng bao lâu một lần?",
            "Xương rồng cần rất ít nước: vào mùa hè bạn tưới khoảng hai tuần một lần, mùa đông thì một tháng "
            "một lần là đủ.",
        ),
        (
            "Làm sao để pha cà phê sữa đá ngon như ngoài quán?",
            "Bạn pha cà phê phin thật đậm, cho hai thìa sữa đặc vào ly, khuấy đều rồi thêm nhiều đá là được.",
        ),
        (
            "Viết giúp mình một lời chúc sinh nhật ngắn cho đồng nghiệp.",
            "Chúc bạn tuổi mới thật nhiều sức khỏe, luôn vui vẻ và thành công trong công việc nhé!",
        ),
    ),
    "id": (
        (
            "Bagaimana cara menyimpan sayuran supaya tetap segar lebih lama?",
            "Bungkus sayuran dengan tisu dapur, masukkan ke wadah tertutup, lalu simpan di laci bawah kulkas.",
        ),
        (
            "Tolong jelaskan apa itu inflasi dengan bahasa sederhana.",
            "Inflasi adalah kenaikan harga barang dan jasa secara umum, sehingga uang yang sama bisa membeli "
            "lebih sedikit barang.",
        ),
        (
            "Apa yang harus saya bawa untuk mendaki gunung selama dua hari?",
            "Bawalah jaket hangat, jas hujan, senter, makanan ringan, air minum yang cukup, dan obat-obatan pribadi.",
        ),
    ),
    "th": (
        (
            "ช่วยแนะนำวิธีดูแลต้นไม้ในบ้านหน่อยครับ",
            "ควรวางต้นไม้ไว้ในที่มีแสงแดดรำไร รดน้ำเมื่อดินเริ่มแห้ง และเช็ดใบให้สะอาดอยู่เสมอ",
        ),
        (
            "ทำไข่เจียวให้ฟูกรอบต้องทำอย่างไร",
            "ตีไข่ให้ขึ้นฟู ใส่น้ำปลาเล็กน้อย แล้วทอดในน้ำมันที่ร้อนจัดด้วยไฟแรง",
        ),
        (
            "อยากออกกำลังกายตอนเช้า ควรเริ่มอย่างไรดี",
            "เริ่มจากเดินเร็ววันละยี่สิบนาที แล้วค่อยเพิ่มเวลาและความหนักขึ้นทีละน้อย",
        ),
    ),
    "es": (
        (
            "¿Cómo puedo quitar una mancha de café de una camisa blanca?",
            "Aclara la mancha con agua fría cuanto antes, aplica un poco de detergente líquido y lava la camisa "
            "como de costumbre.",
        ),
        (
            "Dame una idea para una cena rápida y saludable.",
            "Prueba una ensalada templada de garbanzos con espinacas, tomate y un huevo a la plancha; se prepara "
            "en quince minutos.",
        ),
        (
            "¿Qué libros me recomiendas para aprender historia de España?",
            "Para empezar, busca un manual de divulgación general y después lee sobre la época que más te interese.",
        ),
    ),
    "fr": (
        (
            "Comment garder mon pain frais plus longtemps ?",
            "Conservez-le dans un sac en tissu à température ambiante, ou congelez-le en tranches si vous ne le "
            "mangez pas rapidement.",
        ),
        (
            "Peux-tu m'expliquer simplement ce qu'est un taux d'intérêt ?",
            "C'est le prix que l'on paie pour emprunter de l'argent, exprimé en pourcentage de la somme empruntée "
            "chaque année.",
        ),
        (
            "Quelles activités faire avec des enfants un jour de pluie ?",
            "Vous pouvez faire des gâteaux ensemble, construire une cabane avec des coussins ou organiser un petit "
            "spectacle de marionnettes.",
        ),
    ),
    "de": (
        (
            "Wie bekomme ich Kalkflecken von der Duschwand?",
            "Sprühen Sie verdünnten Essig auf die Flecken, lassen Sie ihn eine Viertelstunde einwirken und wischen "
            "Sie danach gründlich nach.",
        ),
        (
            "Erkläre mir kurz, was ein Girokonto ist.",
            "Ein Girokonto ist ein Bankkonto für den täglichen Zahlungsverkehr, auf das zum Beispiel das Gehalt "
            "eingeht und von dem Miete und Rechnungen abgebucht werden.",
        ),
        (
            "Was kann ich am Wochenende mit Freunden unternehmen?",
            "Wie wäre es mit einer Wanderung am Samstag und einem gemeinsamen Kochabend am Sonntag?",
        ),
    ),
    "pt": (
        (
            "Como faço para tirar mancha de gordura da roupa?",
            "Coloque um pouco de detergente de louça sobre a mancha, esfregue com cuidado e deixe agir por alguns "
            "minutos antes de lavar.",
        ),
        (
            "Me explica de forma simples o que é a taxa Selic.",
            "É a taxa básica de juros da economia brasileira, usada pelo Banco Central para controlar a inflação.",
        ),
        (
            "Que presente eu posso dar para uma amiga que gosta de cozinhar?",
            "Um bom livro de receitas, uma faca de qualidade ou um kit de temperos artesanais costumam agradar muito.",
        ),
    ),
    "ar": (
        (
            "كيف أحافظ على نبتة الصبار في المنزل؟",
            "ضع الصبار في مكان مشمس واسقه مرة كل أسبوعين تقريبا، وتأكد من أن التربة جيدة التصريف.",
        ),
        (
            "اشرح لي ما هو التضخم بكلمات بسيطة.",
            "التضخم هو ارتفاع عام في أسعار السلع والخدمات، فتصبح النقود نفسها قادرة على شراء أشياء أقل.",
        ),
        (
            "ما هي أفضل طريقة لتعلم لغة جديدة؟",
            "خصص وقتا قصيرا كل يوم للممارسة، واستمع إلى محادثات حقيقية، ولا تخف من ارتكاب الأخطاء.",
        ),
    ),
}
